"""Metrics a trainer could not deliver before it ended (ingest was down or slow) travel in its output as
``metrics-spool.jsonl``; the provider sends them once the output is here, so no accepted metric is lost."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from shared.settings import Settings
from shared.tokens import job_token

from .bundles import open_report

log = logging.getLogger(__name__)

SPOOL = "metrics-spool.jsonl"
#: How long one attempt to deliver a spool may take; what is left is tried again on a later poll.
REPLAY_TIMEOUT_S = 15.0


def replay_spool(settings: Settings, job_id: str, folder: Path) -> bool:
    """Send what is left in ``folder``'s spool; True when nothing is left.

    The spool is read (never through a link) into a folder of the server's own and replayed from there, and the
    workload's copy removed once all is sent: the output folder may belong to a trainer's uid, which must not be
    able to make the server write where it points."""
    from trainer.reporter import MetricsReporter

    names = (SPOOL, f"{SPOOL}.acked")
    with tempfile.TemporaryDirectory(prefix="tunefleet-spool-") as private:
        copied = [_copy_report(folder / name, Path(private) / name) for name in names]
        if not copied[0]:
            return True
        reporter = MetricsReporter(settings.ingest_url, job_id, job_token(settings.require_secret_key(), job_id),
                                   str(Path(private) / SPOOL))
        if not reporter.close(timeout=REPLAY_TIMEOUT_S):
            log.warning("job %s: metrics still spooled in %s", job_id, folder / SPOOL)
            return False
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(folder / name)  # removes a link itself, never what it points to
    return True


def _copy_report(source: Path, target: Path) -> bool:
    """Copy a regular, non-empty file of the output folder; False when there is none."""
    fd = open_report(source)
    if fd is None:
        return False
    with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
        return dst.tell() > 0
