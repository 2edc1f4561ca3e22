"""A three-node NATS JetStream cluster of ``nats-server`` processes on loopback, for tests that need a clustered NATS
(stream replicas, failover). Each node has its own client, route and monitoring port (free ones), its own store
folder and server name; they share one cluster name, route to each other, and ask for the same user and password as
``EmbeddedNats``. ``start`` returns once the cluster has a JetStream meta leader that every node agrees on."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.cli.embedded import NATS_USER, free_port, nats_server_binary, owner_only_secret, stop_process

CLUSTER_NAME = "tunefleet-test"


@dataclass
class Node:
    name: str
    folder: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = field(default=None, repr=False)
    killed: bool = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def monitor(self, endpoint: str, **params) -> dict | None:
        """The node's monitoring answer (``jsz``, ``routez``, ``varz``), or None while it does not answer."""
        try:
            r = httpx.get(f"http://127.0.0.1:{self.http_port}/{endpoint}", params=params, timeout=2)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None


class NatsCluster:
    def __init__(self, folder: Path, size: int = 3):
        self.folder = folder
        self.nodes = [Node(f"n{i + 1}", folder / f"n{i + 1}") for i in range(size)]

    @property
    def password(self) -> str:
        return owner_only_secret(self.folder / "password")

    def node_url(self, node: Node) -> str:
        return f"nats://{NATS_USER}:{self.password}@127.0.0.1:{node.port}"

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: what ``TUNEFLEET_NATS_URL`` takes for a cluster."""
        return ",".join(self.node_url(n) for n in self.nodes)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def _config(self, node: Node) -> str:
        credentials = {"user": NATS_USER, "password": self.password}
        routes = [f"nats-route://{NATS_USER}:{self.password}@127.0.0.1:{other.cluster_port}"
                  for other in self.nodes if other is not node]
        return "\n".join([
            f"server_name: {node.name}",
            f"host: 127.0.0.1\nport: {node.port}\nhttp: \"127.0.0.1:{node.http_port}\"",
            f"jetstream {{ store_dir: {json.dumps(str(node.folder / 'js'))} }}",
            f"authorization {json.dumps(credentials)}",
            f"cluster {{ name: {CLUSTER_NAME}, host: 127.0.0.1, port: {node.cluster_port}, "
            f"authorization: {json.dumps(credentials)}, routes: {json.dumps(routes)} }}", ""])

    def spawn(self, node: Node) -> None:
        """Start ``node`` (again, on the same ports and store folder); returns at once."""
        node.folder.mkdir(parents=True, exist_ok=True)
        node.killed = False
        config = node.folder / "nats.conf"
        config.write_text(self._config(node))
        config.chmod(0o600)
        with open(node.folder / "nats.log", "ab") as logfile:
            node.process = subprocess.Popen([nats_server_binary(), "-c", str(config)], stdout=logfile,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def start(self, timeout: float = 60.0) -> NatsCluster:
        for node in self.nodes:
            self.spawn(node)
        self.wait_formed(timeout)
        return self

    def kill(self, node: Node) -> None:
        """SIGKILL ``node``: no goodbye to its peers or clients."""
        node.killed = True
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(30)

    def stop(self) -> None:
        for node in self.nodes:
            stop_process(node.process, signal.SIGTERM, 15)

    def meta_leader(self, node: Node) -> str | None:
        """The JetStream meta leader ``node`` knows of, or None (not answering, or no leader yet)."""
        jsz = node.monitor("jsz")
        return ((jsz or {}).get("meta_cluster") or {}).get("leader") or None

    def agreed_leader(self) -> str | None:
        """The meta leader when every live node names the same one and sees every other node routed, the leader
        sees every live peer current, and every stream a live node holds has a leader (a live node that says it
        leads it)."""
        live = [n for n in self.nodes if n.alive]
        leaders = {self.meta_leader(n) for n in live}
        routed = all(((n.monitor("routez") or {}).get("num_routes") or 0) >= len(live) - 1 for n in live)
        streams, led = self._streams()
        if len(leaders) != 1 or None in leaders or not routed or not streams <= led.keys():
            return None
        leader = leaders.pop()
        meta = (self.node(leader).monitor("jsz") or {}).get("meta_cluster") or {}  # the leader's view of its peers
        return leader if sum(bool(r.get("current")) for r in meta.get("replicas") or []) >= len(live) - 1 else None

    def wait_formed(self, timeout: float = 60.0) -> str:
        """Until ``agreed_leader`` names one (returned): JetStream and every stream answer from then on."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                assert node.killed or node.alive, f"{node.name} exited: {self.log_tail(node)}"
            if leader := self.agreed_leader():
                return leader
            time.sleep(0.2)
        raise AssertionError(f"no JetStream meta leader within {timeout:.0f} s: "
                             + "; ".join(f"{n.name}: {self.log_tail(n, 400)}" for n in self.nodes))

    def stream_leaders(self) -> dict[str, str]:
        """Each stream's leader: the live node that says it leads it."""
        return self._streams()[1]

    def _streams(self) -> tuple[set[str], dict[str, str]]:
        names: set[str] = set()
        leaders: dict[str, str] = {}
        for node in (n for n in self.nodes if n.alive):
            for account in (node.monitor("jsz", accounts="true", streams="true") or {}).get("account_details") or []:
                for stream in account.get("stream_detail") or []:
                    names.add(stream["name"])
                    if (stream.get("cluster") or {}).get("leader") == node.name:
                        leaders[stream["name"]] = node.name
        return names, leaders

    def caught_up(self, node: Node) -> bool:
        """Whether ``node`` is routed to every other live node and is a current replica of every stream it holds."""
        jsz = node.monitor("jsz", accounts="true", streams="true")
        if not jsz or not (jsz.get("meta_cluster") or {}).get("leader"):
            return False
        others = [n for n in self.nodes if n.alive and n is not node]
        if ((node.monitor("routez") or {}).get("num_routes") or 0) < len(others):
            return False
        for account in jsz.get("account_details") or []:
            for stream in account.get("stream_detail") or []:
                cluster = stream.get("cluster") or {}
                if cluster.get("leader") == node.name:
                    continue
                replica = next((r for r in cluster.get("replicas") or [] if r.get("name") == node.name), None)
                if replica is not None and not replica.get("current"):
                    return False
        return True

    def log_tail(self, node: Node, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return (node.folder / "nats.log").read_text(errors="replace")[-chars:]
        return ""
