"""The whole log of a job: every line a workload writes is published by its provider's runner, kept once by the
scheduler (however often it is sent again), and read by page, by search or as a text file."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import tarfile
import uuid

import httpx
from faststream.nats import NatsBroker

from services.cloud import heartbeats
from services.cloud.bundles import artifacts_dir, bundle_dir, workload_env
from services.cloud.joblog import LOG, read_lines
from services.cloud.runner import CloudRunner
from services.gateway import log_pages
from services.provider_local.compute import LocalCompute
from services.scheduler.subscribers import wire as wire_scheduler
from shared import subjects
from shared.bus import publish
from shared.config import DataFormat
from shared.db import create_pool
from shared.events import ProvisionJob, WorkloadLogged
from trainer.bootstrap import Heartbeat, Log

from .conftest import gateway_client, running_service, served_gateway
from .test_gateway import auth
from .test_provider_local import config_for
from .test_scheduler import deploy


async def _visible_job(pool, job_id: str) -> None:
    await pool.execute("INSERT INTO deploy_requests (job_id, user_id, provider, message, published_at) "
                       "VALUES ($1, 'alice', 'local', '{}', now())", job_id)


def logged(job_id: str, attempt: int, first_line: int, lines: list[str]) -> WorkloadLogged:
    return WorkloadLogged(job_id=job_id, provider="local", attempt=attempt, first_line=first_line, lines=lines)


async def _wait_lines(pool, job_id: str, n: int, timeout: float = 20.0) -> None:
    async def poll():
        while await pool.fetchval("SELECT count(*) FROM job_log_lines WHERE job_id = $1", job_id) < n:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(poll(), timeout)


async def test_a_local_trainers_log_is_published_once_across_crashes_and_restarts(migrated, pool, dataset):
    job_id, published = str(uuid.uuid4()), []

    async def publish_log(event: WorkloadLogged) -> None:
        published.append(event)

    async def report(event) -> None:
        pass

    # The trainer's stand-in: 3000 lines, a wait, then a progress bar redrawn in place and a last line unfinished.
    script = ("for i in $(seq 1 3000); do echo line $i; done; while [ ! -e go ]; do sleep 0.05; done; "
              "printf 'after restart\\nbar 50%%\\rbar 100%%\\nthe end'")
    first = CloudRunner(LocalCompute(migrated), migrated, pool, report, publish_log=publish_log)
    first.compute._argv = lambda spec: ["sh", "-c", script]
    await first.provision(ProvisionJob(job_id=job_id, provider="local", user_id="alice",
                                       config=config_for("unused", dataset, 5), dataset_path=dataset,
                                       dataset_format=DataFormat.INSTRUCTION))
    folder = artifacts_dir(migrated, job_id, 1)

    async def written(n: int) -> None:
        while (folder / LOG).read_bytes().count(b"\n") < n:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(written(3000), 20)
    stored, real_logged = [], first.workloads.logged

    async def crash_once(*args) -> None:  # the process dies between a publish and storing how far it got
        stored.append(args)
        if len(stored) == 1:
            raise ConnectionError("PostgreSQL went away")
        await real_logged(*args)

    first.workloads.logged = crash_once
    await first.poll_once()
    assert [(e.first_line, len(e.lines)) for e in published] == [(1, 2000)]
    await first.poll_once()  # the batch again, under the same number and id; then the next
    assert [(e.first_line, len(e.lines)) for e in published] == [(1, 2000), (1, 2000), (2001, 1000)]
    assert published[0].event_id == published[1].event_id and published[0].lines == published[1].lines

    second = CloudRunner(LocalCompute(migrated), migrated, pool, report, publish_log=publish_log)  # restarted
    await second.poll_once()
    assert len(published) == 3  # it carries on from what was stored: nothing again
    (bundle_dir(migrated, job_id, 1) / "go").touch()
    await asyncio.wait_for(written(3002), 20)
    await asyncio.sleep(0.3)  # the process exits: the attempt ends, with the unfinished last line
    await second.poll_once()
    assert not await second.workloads.live()
    (folder / LOG).open("ab").write(b"written as it exited\n")  # after the end was reported
    await second.poll_once()

    lines = {}
    for event in published:
        for i, text in enumerate(event.lines):
            assert lines.setdefault(event.first_line + i, text) == text  # one number, one text
    assert sorted(lines) == list(range(1, len(lines) + 1))
    assert [lines[n] for n in (1, 3000)] == ["line 1", "line 3000"]
    assert [lines[n] for n in range(3001, len(lines) + 1)] == ["after restart", "bar 100%", "the end",
                                                               "written as it exited"]


async def test_log_lines_are_kept_once_and_read_by_page_search_attempt_and_as_text(
        migrated, pool, api_key, other_key, recorder, nats_url, monkeypatch):
    job_id = str(uuid.uuid4())
    await _visible_job(pool, job_id)
    first = [f"step {i} loss {1 / i:.3f}" for i in range(1, 11)]
    async with running_service("scheduler", wire_scheduler, migrated):
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, logged(job_id, 1, 1, ["before the job exists"]))  # kept nowhere, and no error
        await publish(broker, deploy(job_id))
        await _wait_lines(pool, job_id, 0)
        await asyncio.sleep(0.3)
        await publish(broker, logged(job_id, 1, 1, first[:6]))
        await publish(broker, logged(job_id, 1, 4, first[3:]))  # a tail sent again, overlapping
        await publish(broker, logged(job_id, 1, 1, first[:6]))  # the same lines in another message
        await publish(broker, logged(job_id, 2, 1, ["Resuming from checkpoint-10", "STEP 11 LOSS 0.090"]))
        await _wait_lines(pool, job_id, 12)
        await broker.stop()
    announced = [line for subject, m in recorder.messages if subject == subjects.job_log(job_id)
                 for line in m["lines"]]
    assert len(announced) == 12 and {(x["attempt"], x["number"]) for x in announced} == (
        {(1, n) for n in range(1, 11)} | {(2, 1), (2, 2)})  # each line told once, in batches
    assert await pool.fetchval("SELECT text FROM job_log_lines WHERE job_id = $1 AND number = 1 AND attempt = 1",
                               job_id) == first[0]

    url = f"/api/training/jobs/{job_id}/logs"
    async with gateway_client(migrated) as client:
        page = (await client.get(url, headers=auth(api_key))).json()
        assert page["job_id"] == job_id and page["total"] == 12 and page["next_after"] == "2:2"
        assert [(x["attempt"], x["number"], x["text"]) for x in page["lines"]] == [
            *((1, n, first[n - 1]) for n in range(1, 11)), (2, 1, "Resuming from checkpoint-10"),
            (2, 2, "STEP 11 LOSS 0.090")]
        head = (await client.get(url, params={"limit": 4}, headers=auth(api_key))).json()
        assert [x["number"] for x in head["lines"]] == [1, 2, 3, 4] and head["next_after"] == "1:4"
        rest = (await client.get(url, params={"after": head["next_after"]}, headers=auth(api_key))).json()
        assert len(rest["lines"]) == 8 and rest["total"] == 12
        newest = (await client.get(url, params={"limit": 3, "tail": "true"}, headers=auth(api_key))).json()
        assert [(x["attempt"], x["number"]) for x in newest["lines"]] == [(1, 10), (2, 1), (2, 2)]
        assert newest["next_after"] == "2:2" and newest["total"] == 12
        end = (await client.get(url, params={"after": "2:2"}, headers=auth(api_key))).json()
        assert end["lines"] == [] and end["next_after"] == "2:2"  # ask again from there for what follows
        found = (await client.get(url, params={"q": "LOSS 0.1"}, headers=auth(api_key))).json()
        assert [x["text"] for x in found["lines"]] == first[5:] and found["total"] == 5  # case-insensitive
        second = (await client.get(url, params={"attempt": 2}, headers=auth(api_key))).json()
        assert [x["number"] for x in second["lines"]] == [1, 2] and second["total"] == 2
        for params, field in (({"after": "soon"}, "after"), ({"limit": 0}, "limit"), ({"limit": 5001}, "limit"),
                              ({"attempt": 0}, "attempt"), ({"q": ""}, "q")):
            r = await client.get(url, params=params, headers=auth(api_key))
            detail = r.json()["detail"]
            assert r.status_code == 422 and field in (detail.get("field"), *(e["field"] for e in
                                                                            detail.get("errors", []))), params
        assert "next_after" in (await client.get(url, params={"after": "x"}, headers=auth(api_key))).text

        monkeypatch.setattr(log_pages, "STREAM_PAGE", 3)  # pages end inside an attempt and at its end
        text = await client.get(f"{url}.txt", headers=auth(api_key))
        assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
        assert text.headers["content-disposition"] == f'attachment; filename="tunefleet-job-{job_id}.log"'
        assert text.text == "\n".join([*first, "----- attempt 2 -----", "Resuming from checkpoint-10",
                                       "STEP 11 LOSS 0.090"]) + "\n"
        only = await client.get(f"{url}.txt", params={"attempt": 2}, headers=auth(api_key))
        assert only.text == "Resuming from checkpoint-10\nSTEP 11 LOSS 0.090\n"
        for path in (url, f"{url}.txt"):
            assert (await client.get(path, headers=auth(other_key))).status_code == 404, path
            assert (await client.get(path)).status_code == 401


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def test_a_remote_workloads_heartbeats_bring_its_whole_log(migrated, tmp_path):
    """The bootstrap's own client against the gateway's heartbeat route, on two gateway replicas with disks of
    their own taking beats in turn: the log the provider's runner pulls from PostgreSQL is the workload's, byte
    for byte, whatever is lost or sent again, and a container restarted without its disk goes on after it. The
    output uploaded at the end never shortens it."""
    job_id = str(uuid.uuid4())
    replica = migrated.model_copy(update={"home": tmp_path / "replica-2"})
    replica.home.mkdir()
    pool = await create_pool(migrated.require_database_url())
    async with served_gateway(migrated) as (settings, _, _), served_gateway(replica) as (_, other_url, _):
        env = workload_env(settings, job_id, 1, resume=False, push=True)
        urls = [env["TUNEFLEET_HEARTBEAT_URL"], other_url + env["TUNEFLEET_HEARTBEAT_URL"].removeprefix(
            settings.public_url)]  # the same signed path on the other replica
        folder = artifacts_dir(settings, job_id, 1)  # the provider's

        turns = itertools.cycle(urls)

        async def beat_on_each(beat: Heartbeat, final: bool = False) -> None:
            beat.url = next(turns)
            await asyncio.to_thread(beat.send, final)

        async def kept() -> bytes:
            await heartbeats.pull(pool, folder, job_id, 1)
            return (folder / LOG).read_bytes()

        work = tmp_path / "work"
        log = Log(str(work / "output" / "train.log"))
        beat = Heartbeat(urls[0], log, str(work / "output" / "progress.json"))
        for i in range(40_000):  # about 1 MB: more than one beat's chunks
            log.file.write(b"pip: collecting package %d\n" % i)
        log.file.write(b"half a li")
        while beat.sent < log.size() - len(b"half a li"):
            await beat_on_each(beat)
        assert await kept() == (work / "output" / "train.log").read_bytes()[:beat.sent]
        assert not (replica.home / "artifacts").exists()  # nothing of it on a gateway's disk

        beat.sent = 1000  # an answer was lost: the same bytes go again, and are kept once
        log.file.write(b"ne\n")
        await beat_on_each(beat)
        assert await kept() == (work / "output" / "train.log").read_bytes()

        fresh = Log(str(tmp_path / "restarted" / "output" / "train.log"))  # a new container, a new disk
        fresh.say("bundle fetched again")
        again = Heartbeat(urls[1], fresh, str(tmp_path / "nowhere.json"))
        await beat_on_each(again)
        fresh.file.write(b"the last line, unfinished")
        await beat_on_each(again, True)
        whole = (work / "output/train.log").read_bytes() + (tmp_path / "restarted/output/train.log").read_bytes()
        assert await kept() == whole

        async with httpx.AsyncClient() as client:  # the output, with the new container's shorter log
            r = await client.put(env["TUNEFLEET_ARTIFACTS_URL"], content=_tar({
                "train.log": (tmp_path / "restarted/output/train.log").read_bytes(),
                "result.json": b'{"status": "completed"}'}))
            assert r.status_code == 204, r.text
            assert (folder / LOG).read_bytes() == whole and (folder / "result.json").exists()
            bad = {"stage": "x", "log": {"offset": 0, "data": "*"}}
            r = await client.put(urls[1], json=bad)
            assert r.status_code == 422 and r.json()["detail"]["field"] == "log.data"
            late = {"stage": "x", "log": {"offset": len(whole),
                                          "data": base64.b64encode(b", finished after the end\n").decode()}}
            r = await client.put(urls[1], json=late)
            assert r.json() == {"log_offset": len(whole) + 25}
            await heartbeats.forget(pool, folder, job_id, 1)  # the attempt ended: the chunks it pulled go, not
            assert await pool.fetchval("SELECT count(*) FROM workload_log_chunks WHERE job_id = $1", job_id) == 1
            await kept()  # the late one, which a later pull still brings
    await pool.close()
    batch, lines = read_lines(folder, 0, final=True), []
    while batch.lines:
        lines += batch.lines
        batch = read_lines(folder, batch.end, final=True)
    assert lines[0] == "pip: collecting package 0" and lines[40_000] == "half a line"
    assert lines[40_001].endswith("bundle fetched again")
    assert lines[40_002:] == ["the last line, unfinished, finished after the end"]
