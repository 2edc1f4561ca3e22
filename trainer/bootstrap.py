"""The start command of a remote workload: ``python -m trainer.bootstrap``.

Everything it needs arrives as environment data, never as shell text:
``TUNEFLEET_BUNDLE_URL`` (signed GET of the bundle), ``TUNEFLEET_ARTIFACTS_URL`` (signed PUT of the output
folder), ``TUNEFLEET_LOG_URL`` (signed PUT of the log tail, every few seconds), and optionally
``TUNEFLEET_WORKDIR`` and ``TUNEFLEET_HOLD_AFTER_EXIT`` (keep the container alive after the upload, so that a
platform that restarts exited containers does not train twice; the provider terminates the resource).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx

LOG_INTERVAL_S = 5.0
ATTEMPTS = 8


def _with_retries(call, what: str):
    for attempt in range(1, ATTEMPTS + 1):
        try:
            response = call()
            if response.status_code < 500 and response.status_code != 429:
                response.raise_for_status()
                return response
            print(f"[bootstrap] {what}: HTTP {response.status_code}, retrying", flush=True)
        except httpx.TransportError as exc:
            print(f"[bootstrap] {what}: {type(exc).__name__}, retrying", flush=True)
        time.sleep(min(2 ** attempt, 30))
    raise RuntimeError(f"{what} failed after {ATTEMPTS} attempts")


def fetch_bundle(url: str, workdir: Path) -> None:
    response = _with_retries(lambda: httpx.get(url, timeout=120), "fetching the bundle")
    workdir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        tar.extractall(workdir, filter="data")


def upload_output(url: str, output: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(output.iterdir()) if output.is_dir() else []:
            if path.name != "checkpoints":
                tar.add(path, arcname=path.name)
    data = buffer.getvalue()
    _with_retries(lambda: httpx.put(url, content=data, timeout=600), "uploading the artifacts")


class LogShipper(threading.Thread):
    """Sends the tail of the trainer's log now and then, for clouds whose API has no logs."""

    def __init__(self, url: str | None, log_path: Path):
        super().__init__(daemon=True)
        self.url, self.log_path, self.stop = url, log_path, threading.Event()

    def ship(self) -> None:
        if not self.url or not self.log_path.exists():
            return
        with contextlib.suppress(httpx.HTTPError):  # the next round sends it again
            httpx.put(self.url, content=self.log_path.read_bytes()[-16000:], timeout=30)

    def run(self) -> None:
        while not self.stop.wait(LOG_INTERVAL_S):
            self.ship()


def main() -> int:
    workdir = Path(os.environ.get("TUNEFLEET_WORKDIR") or Path.cwd() / "tunefleet-job")
    fetch_bundle(os.environ["TUNEFLEET_BUNDLE_URL"], workdir)
    output = workdir / "output"
    output.mkdir(exist_ok=True)
    log_path = output / "train.log"
    shipper = LogShipper(os.environ.get("TUNEFLEET_LOG_URL"), log_path)
    shipper.start()
    with open(log_path, "ab") as log:
        code = subprocess.call([sys.executable, "-m", "trainer", "--spec", "spec.json"], cwd=workdir,
                               stdout=log, stderr=subprocess.STDOUT)
    shipper.stop.set()
    shipper.ship()
    upload_output(os.environ["TUNEFLEET_ARTIFACTS_URL"], output)
    print(f"[bootstrap] trainer exited with {code}; artifacts uploaded", flush=True)
    if os.environ.get("TUNEFLEET_HOLD_AFTER_EXIT") == "1":
        while True:
            time.sleep(3600)
    return code


if __name__ == "__main__":
    sys.exit(main())
