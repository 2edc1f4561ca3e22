"""Streams get one replica on a lone NATS server and three on a cluster, asked of the server itself; a stream made
with another count is brought to it; a client given a cluster's URLs carries on through the loss of its server."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import nats
import pytest

from shared import subjects
from shared.bus import STREAM_CONFIGS, connect, connect_options, ensure_streams, stream_replicas
from tests.natscluster import NatsCluster

STREAMS = [c.name for c in STREAM_CONFIGS]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> NatsCluster:
    nodes = NatsCluster(tmp_path_factory.mktemp("natscluster")).start()
    yield nodes
    nodes.stop()


async def replicas(url: str) -> dict[str, tuple[int, int]]:
    """Each stream's configured replicas, and the servers that hold a current copy (its leader and its replicas
    that have caught up)."""
    nc = await connect(url, "test")
    try:
        found = {}
        for name in STREAMS:
            info = await nc.jetstream().stream_info(name)
            held = 1 + sum(bool(r.current) for r in info.cluster.replicas or []) if info.cluster else 1
            found[name] = (info.config.num_replicas, held)
        return found
    finally:
        await nc.close()


async def every_copy_current(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (found := await replicas(url)) != {name: (3, 3) for name in STREAMS}:
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.3)


def test_the_count_follows_the_cluster_the_server_names():
    assert stream_replicas({"server_name": "n1", "cluster": "prod", "jetstream": True}) == 3
    assert stream_replicas({"server_name": "NBSD2R", "jetstream": True}) == 1


def test_a_cluster_url_is_every_server_and_the_credentials_apart():
    options = connect_options("nats://tf:s%40cret@127.0.0.1:4222, nats://tf:s%40cret@127.0.0.1:4223,127.0.0.1:4224")
    assert options == {"servers": ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"],
                       "user": "tf", "password": "s@cret"}
    assert connect_options("nats://tok@h:4222") == {"servers": ["nats://h:4222"], "token": "tok"}
    assert connect_options("nats://h:4222") == {"servers": ["nats://h:4222"]}


async def test_a_lone_server_gets_one_replica(nats_url: str):
    await ensure_streams(nats_url)
    await ensure_streams(nats_url)  # again, as every service does at its start
    assert await replicas(nats_url) == {name: (1, 1) for name in STREAMS}


async def test_a_cluster_gets_three_and_older_streams_are_raised_to_three(cluster: NatsCluster):
    nc = await connect(cluster.url, "test")
    try:  # what an older TuneFleet made on this cluster: one replica each
        for config in STREAM_CONFIGS:
            await nc.jetstream().add_stream(dataclasses.replace(config, num_replicas=1))
        assert stream_replicas(nc._server_info) == 3
    finally:
        await nc.close()
    await ensure_streams(cluster.url)
    await every_copy_current(cluster.url)  # the new copies are made in the background (in about a second)


async def test_a_client_of_the_cluster_goes_on_when_its_server_dies(cluster: NatsCluster):
    """nats-py learns the other servers from the one it is connected to, without credentials: it is handed them
    apart (``connect_options``), or it would meet "Authorization Violation" on every one of them."""
    await ensure_streams(cluster.url)
    # every copy current first: a stream that loses a server while its new copies catch up stalls until it returns
    await every_copy_current(cluster.url)
    nc = await connect(cluster.url, "test")
    try:
        lost = next(n for n in cluster.nodes if n.port == nc.connected_url.port)
        cluster.kill(lost)
        deadline = time.monotonic() + 60
        while True:
            try:
                ack = await nc.jetstream().publish(subjects.job_status("failover"), b"{}", timeout=2)
                break
            except (TimeoutError, nats.errors.Error):
                assert time.monotonic() < deadline, "no publish was stored within 60 s of losing a server"
                await asyncio.sleep(0.5)
        assert ack.stream == subjects.EVENTS_STREAM and nc.connected_url.port != lost.port
    finally:
        await nc.close()
        cluster.spawn(lost)
        cluster.wait_formed()
