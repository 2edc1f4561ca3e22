"""Send each checkpoint off the machine as soon as it is saved, so that a new attempt on another machine can
resume from it when this one is lost.

``spec.checkpoint_upload_url`` is a signed ``PUT`` URL; the body is a tar.gz holding one ``checkpoint-N/`` folder.
Uploads run on a background thread so training never waits for the network; when a newer checkpoint is saved
while one is still queued, only the newest is sent. A failed upload is retried with back-off and then given up
(the next checkpoint will try again); it never fails the training.

Before a checkpoint leaves, the metrics logged up to it are delivered (``MetricsReporter.flush``): a run that
resumes from step N carries on at N + 1 with steps 1..N already stored, so its metric steps have no gap. When
ingest cannot be reached, the undelivered batches travel inside the archive (``checkpoint-N/_spool/``) and the
resumed run sends them (``replay_checkpoint_spool``).
"""

from __future__ import annotations

import logging
import os
import queue
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable

import httpx
from transformers import TrainerCallback

from trainer import artifacts

log = logging.getLogger(__name__)

ATTEMPTS = 5
METRICS_FLUSH_S = 60.0
SPOOL_DIR = "_spool"


class CheckpointUploader:
    def __init__(self, url: str, printer: Callable[[str], None] = print, *, reporter=None,
                 timeout_s: float = 1800.0):
        self.url, self.printer, self.timeout_s, self.reporter = url, printer, timeout_s, reporter
        self._pending: queue.Queue[str | None] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self.uploaded: list[str] = []
        self._thread = threading.Thread(target=self._run, name="checkpoint-upload", daemon=True)
        self._thread.start()

    def submit(self, checkpoint_dir: str) -> None:
        self._idle.clear()
        self._pending.put(checkpoint_dir)

    def _run(self) -> None:
        while True:
            path = self._pending.get()
            while path is not None and not self._pending.empty():  # only the newest matters
                newer = self._pending.get()
                path = newer if newer is not None else path
                if newer is None:
                    self._pending.put(None)
                    break
            if path is None:
                self._idle.set()
                return
            self._upload(path)
            if self._pending.empty():
                self._idle.set()

    def _upload(self, path: str) -> None:
        name = os.path.basename(path)
        delivered = self.reporter is None or self.reporter.flush(timeout=METRICS_FLUSH_S)
        with tempfile.TemporaryFile() as archive:
            try:
                with tarfile.open(fileobj=archive, mode="w:gz", compresslevel=1) as tar:
                    tar.add(path, arcname=name)
                    if not delivered:
                        for spool in (self.reporter.spool_path, self.reporter.spool_path + ".acked"):
                            if os.path.exists(spool):
                                tar.add(spool, arcname=f"{name}/{SPOOL_DIR}/{os.path.basename(spool)}")
            except FileNotFoundError:  # rotated away while it was packed: a newer one is on its way
                return
            size = archive.tell()
            for attempt in range(1, ATTEMPTS + 1):
                archive.seek(0)
                try:
                    response = httpx.put(self.url, content=_chunks(archive), timeout=self.timeout_s,
                                         headers={"content-length": str(size), "content-type": "application/gzip"})
                    if response.status_code < 300:
                        self.uploaded.append(name)
                        self.printer(f"[trainer] checkpoint {name} uploaded ({size / 2**20:.1f} MiB)")
                        return
                    if 400 <= response.status_code < 500 and response.status_code != 429:
                        self.printer(f"[trainer] checkpoint {name} refused: HTTP {response.status_code} "
                                     f"{response.text[:200]}")
                        return
                    reason = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    reason = type(exc).__name__
                log.warning("checkpoint %s upload attempt %s failed: %s", name, attempt, reason)
                time.sleep(min(2 ** attempt, 30))
            self.printer(f"[trainer] checkpoint {name} could not be uploaded; the next one will be tried")

    def close(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for queued uploads; True when none is left."""
        done = self._idle.wait(timeout)
        self._pending.put(None)
        return done


def _chunks(f, size: int = 1 << 20):
    while chunk := f.read(size):
        yield chunk


def replay_checkpoint_spool(checkpoint_dir: str, ingest_url: str | None, job_id: str, token: str | None) -> None:
    """Send the metric batches a checkpoint carries because its run could not deliver them in time."""
    spool = os.path.join(checkpoint_dir, SPOOL_DIR, artifacts.SPOOL)
    if not os.path.exists(spool) or not ingest_url:
        return
    from trainer.reporter import MetricsReporter

    MetricsReporter(ingest_url, job_id, token, spool).close(timeout=METRICS_FLUSH_S)


class CheckpointUploadCallback(TrainerCallback):
    def __init__(self, uploader: CheckpointUploader, output_dir: str):
        self.uploader, self.output_dir = uploader, output_dir

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        latest = artifacts.latest_checkpoint(self.output_dir)
        if latest and os.path.basename(latest) == f"checkpoint-{state.global_step}":
            self.uploader.submit(latest)
