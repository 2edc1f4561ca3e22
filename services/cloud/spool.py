"""Metrics a trainer could not deliver before it ended (ingest was down or slow) travel in its output as
``metrics-spool.jsonl``; the provider sends them once the output is here, so no accepted metric is lost."""

from __future__ import annotations

import logging
from pathlib import Path

from shared.settings import Settings
from shared.tokens import job_token

log = logging.getLogger(__name__)

SPOOL = "metrics-spool.jsonl"
#: How long one attempt to deliver a spool may take; what is left is tried again on a later poll.
REPLAY_TIMEOUT_S = 15.0


def replay_spool(settings: Settings, job_id: str, folder: Path) -> bool:
    """Send what is left in ``folder``'s spool; True when nothing is left."""
    spool = folder / SPOOL
    try:
        if spool.stat().st_size == 0:
            return True
    except FileNotFoundError:
        return True
    from trainer.reporter import MetricsReporter

    reporter = MetricsReporter(settings.ingest_url, job_id, job_token(settings.require_secret_key(), job_id),
                               str(spool))
    if reporter.close(timeout=REPLAY_TIMEOUT_S):
        return True
    log.warning("job %s: metrics still spooled in %s", job_id, spool)
    return False
