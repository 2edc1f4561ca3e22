"""What the benchmarks share: their subprocesses (started in their own process groups, logs in a folder), CPU
accounting, waiting for an HTTP answer, and timestamped progress lines."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from contextlib import suppress
from pathlib import Path

import httpx
import psutil

STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[bench {time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


class Processes:
    def __init__(self, logs: Path):
        self.logs = logs
        self.running: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.logs / f"{name}.log", "ab") as out:
            self.running[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, start_new_session=True)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by each process and its children, and by PostgreSQL and NATS."""
        used: dict[str, float] = {}
        groups = {name: psutil.Process(proc.pid) for name, proc in self.running.items()}
        for name, root in groups.items():
            with suppress(psutil.Error):
                used[name] = sum(_cpu(p) for p in [root, *root.children(recursive=True)])
        used["postgres"] = sum(_cpu(p) for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres")
        used["nats"] = sum(_cpu(p) for p in psutil.process_iter(["name"]) if p.info["name"] == "nats-server")
        return used

    def check(self) -> None:
        for name, proc in self.running.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.running.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _cpu(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def cpu_report(before: dict[str, float], after: dict[str, float]) -> str:
    return ", ".join(f"{k} {after.get(k, 0.0) - v:.1f}" for k, v in before.items())


async def wait_http(procs: Processes, url: str, ok=lambda r: r.status_code == 200, patience: float = 180) -> None:
    deadline = time.monotonic() + patience
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            procs.check()
            with suppress(httpx.HTTPError):
                if ok(await client.get(url)):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer in {patience:.0f}s")
            await asyncio.sleep(0.25)
