"""Stream metric and prediction records to metrics_ingest in batches, spooling to disk what cannot be sent.

Protocol: ``POST {ingest_url}/v1/jobs/{job_id}/batches`` with ``Authorization: Bearer {token}`` and the JSON body::

    {"batch_id": "<uuid4>", "attempt": 1,
     "metrics": [{"step": 10, "epoch": 0.5, "values": {"loss": 1.2}, "recorded_at": "2025-01-01T00:00:00+00:00"}],
     "predictions": [{"step": 10, "epoch": 0.5, "sample_index": 0, "prompt": "...", "generated": "...",
                      "expected": "...", "scores": {"bleu": 12.3, "rouge_l": 0.41}}]}

``scores`` rate ``generated`` against ``expected`` (see ``trainer.scoring``); ``{}`` when none were computed.

A batch holds at most ``max_batch`` records and keeps its ``batch_id`` for ever, so ingest can drop replays it
has already stored. Any 2xx answer means stored.

Delivery: every batch is first appended to the spool file (one body per line, the exact bytes that are
POSTed), then the spool is sent oldest first; a sent batch's id is appended to ``{spool_path}.acked`` and the
two files are compacted once everything is sent. So the spool is a FIFO outbox that survives a crash, and a
reporter started on an existing spool replays it before anything new.

* connection error, timeout, 5xx, 429: stop, back off (``Retry-After`` when given, else exponential up to 30 s)
  and retry the same batch later.
* 413: split the batch in two new batches (new ids: the server stored nothing) and retry; a single record
  that is still too large is handled like 422.
* 401, 403, 404: ingest refuses this job or token: logged once, backs off up to 60 s and retries later.
* other 4xx (400, 409, 422, ...): the batch is logged, left in the spool file and skipped for the rest of this
  reporter's life (the next reporter on the same spool tries it once more).

``ingest_url=None`` only spools. ``close(timeout)`` sends what it can before the deadline; whatever is left
stays in the spool file. The token is never logged. One reporter per spool file at a time.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import math
import os
import threading
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from enum import Enum

import httpx

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
MAX_BLOCKED_BACKOFF_S = 60.0
MAX_RETRY_AFTER_S = 300.0


class _Outcome(Enum):
    SENT = "sent"
    RETRY = "retry"
    BLOCKED = "blocked"
    TOO_LARGE = "too_large"
    REJECTED = "rejected"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), capped; None when absent/invalid."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def clean_values(values: dict) -> dict[str, float]:
    """Keep the finite numbers (bools and non-numbers are dropped), as floats."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(value):
            out[str(key)] = float(value)
    return out


class _Spool:
    """The outbox file: one batch body per line, plus ``.acked`` (ids already sent). Used by one thread."""

    def __init__(self, path: str):
        self.path = path
        self.ack_path = path + ".acked"
        self.queue: deque[tuple[str, str]] = deque()
        self.rejected: list[tuple[str, str]] = []
        self._load()

    def _load(self) -> None:
        acked: set[str] = set()
        if os.path.exists(self.ack_path):
            with open(self.ack_path, encoding="utf-8") as f:
                acked = {line.strip() for line in f if line.strip()}
        dirty = bool(acked)
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                for raw in f:
                    line = raw.strip()
                    if not line:
                        continue
                    try:
                        batch_id = json.loads(line)["batch_id"]
                    except (ValueError, KeyError, TypeError):
                        log.warning("metrics spool %s: skipping a damaged line", self.path)
                        dirty = True
                        continue
                    if batch_id not in acked:
                        self.queue.append((batch_id, line))
                    if not raw.endswith("\n"):
                        dirty = True
        if dirty:
            self.rewrite()

    def __len__(self) -> int:
        return len(self.queue)

    def append(self, batch_id: str, line: str) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
        self.queue.append((batch_id, line))

    def head(self) -> tuple[str, str] | None:
        return self.queue[0] if self.queue else None

    def ack_head(self) -> None:
        batch_id, _ = self.queue.popleft()
        if self.queue:
            with open(self.ack_path, "a", encoding="utf-8") as f:
                f.write(batch_id + "\n")
        else:
            self.rewrite()

    def reject_head(self) -> None:
        self.rejected.append(self.queue.popleft())
        if not self.queue:
            self.rewrite()

    def replace_head(self, entries: list[tuple[str, str]]) -> None:
        self.queue.popleft()
        self.queue.extendleft(reversed(entries))
        self.rewrite()

    def rewrite(self) -> None:
        """Write the unsent batches (rejected ones first) back and drop the ``.acked`` file."""
        lines = [line for _, line in [*self.rejected, *self.queue]]
        if lines:
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in lines)
            os.replace(tmp, self.path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.ack_path)


class MetricsReporter:
    """Collects records from any thread and ships them from one background thread (see the module doc)."""

    def __init__(
        self,
        ingest_url: str | None,
        job_id: str,
        token: str | None,
        spool_path: str,
        *,
        flush_interval: float = 1.0,
        max_batch: int = 500,
        request_timeout: float = 10.0,
        attempt: int = 1,
    ):
        self.ingest_url = ingest_url.rstrip("/") if ingest_url else None
        self.job_id = job_id
        self.attempt = attempt
        self.spool_path = spool_path
        self.flush_interval = flush_interval
        self.max_batch = max(1, max_batch)
        self.request_timeout = request_timeout
        self._url = f"{self.ingest_url}/v1/jobs/{job_id}/batches" if self.ingest_url else None
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._lock = threading.Lock()
        self._metrics: list[dict] = []
        self._predictions: list[dict] = []
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._cycle_done = threading.Condition()
        self._cycles = 0
        self._busy = False
        self._deadline: float | None = None
        self._retry_at = 0.0
        self._failures = 0
        self._state = "ok"
        self.sent_batches = 0
        self.spooled_batches = 0
        self._closed = False
        self._spool = _Spool(spool_path)
        self._client = httpx.Client() if self._url else None
        self._thread = threading.Thread(target=self._run, name="metrics-reporter", daemon=True)
        self._thread.start()

    # -- producers -------------------------------------------------------------------------------------

    def log_metrics(self, step: int, epoch: float | None, values: dict) -> None:
        record = {
            "step": int(step),
            "epoch": None if epoch is None else float(epoch),
            "values": clean_values(values),
            "recorded_at": _now_iso(),
        }
        self._add("metrics", record)

    def log_prediction(
        self,
        step: int,
        epoch: float | None,
        sample_index: int,
        prompt: str,
        generated: str,
        expected: str,
        scores: dict[str, float] | None = None,
    ) -> None:
        record = {
            "step": int(step),
            "epoch": None if epoch is None else float(epoch),
            "sample_index": int(sample_index),
            "prompt": prompt,
            "generated": generated,
            "expected": expected,
            "scores": clean_values(scores or {}),
        }
        self._add("predictions", record)

    def _add(self, kind: str, record: dict) -> None:
        if self._closed:
            log.warning("metrics reporter is closed; record for step %s dropped", record["step"])
            return
        with self._lock:
            (self._metrics if kind == "metrics" else self._predictions).append(record)
            full = len(self._metrics) + len(self._predictions) >= self.max_batch
        if full:
            self._wake.set()

    # -- control ---------------------------------------------------------------------------------------

    @property
    def spooled(self) -> int:
        """Batches in the spool not yet sent (including those ingest rejected)."""
        return len(self._spool) + len(self._spool.rejected)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until the worker has run a full cycle after this call; True when the spool is empty."""
        with self._cycle_done:
            target = self._cycles + (2 if self._busy else 1)
            self._wake.set()
            self._cycle_done.wait_for(lambda: self._cycles >= target or not self._thread.is_alive(), timeout)
        return self.spooled == 0

    def close(self, timeout: float = 30.0) -> bool:
        """Send everything possible within ``timeout`` seconds; True when nothing is left in the spool."""
        if not self._closed:
            self._closed = True
            self._deadline = time.monotonic() + timeout
            self._closing.set()
            self._wake.set()
            self._thread.join(timeout + 5.0)
            if self._client is not None and not self._thread.is_alive():
                self._client.close()
        return not self._thread.is_alive() and self.spooled == 0

    def __enter__(self) -> MetricsReporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- worker ----------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closing.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._closing.is_set():
                break
            self._safe_cycle()
        self._final_flush()

    def _safe_cycle(self) -> None:
        with self._cycle_done:
            self._busy = True
        try:
            self._cycle()
        except Exception:
            log.exception("metrics reporter cycle failed")
        with self._cycle_done:
            self._busy = False
            self._cycles += 1
            self._cycle_done.notify_all()

    def _final_flush(self) -> None:
        deadline = self._deadline or time.monotonic()
        while True:
            self._safe_cycle()
            if len(self._spool) == 0 or self._url is None:
                break
            wait = self._retry_at - time.monotonic()
            if time.monotonic() + max(wait, 0.0) >= deadline:
                break
            if wait > 0:
                time.sleep(wait)
        try:
            self._spool.rewrite()
        except OSError:
            log.exception("could not compact the metrics spool %s", self.spool_path)

    def _drain(self) -> None:
        with self._lock:
            records = [("metrics", r) for r in self._metrics] + [("predictions", r) for r in self._predictions]
            self._metrics, self._predictions = [], []
        for start in range(0, len(records), self.max_batch):
            self._spool_batch(records[start:start + self.max_batch])

    def _spool_batch(self, records: list[tuple[str, dict]]) -> tuple[str, str]:
        body = {
            "batch_id": str(uuid.uuid4()),
            "attempt": self.attempt,
            "metrics": [r for kind, r in records if kind == "metrics"],
            "predictions": [r for kind, r in records if kind == "predictions"],
        }
        line = json.dumps(body, separators=(",", ":"), allow_nan=False)
        self._spool.append(body["batch_id"], line)
        self.spooled_batches += 1
        return body["batch_id"], line

    def _cycle(self) -> None:
        self._drain()
        if self._url is None:
            return
        while (entry := self._spool.head()) is not None:
            now = time.monotonic()
            if now < self._retry_at or (self._deadline is not None and now >= self._deadline):
                return
            batch_id, line = entry
            outcome, retry_after, status = self._post(line)
            if outcome is _Outcome.SENT:
                self._spool.ack_head()
                self.sent_batches += 1
                self._failures = 0
                if self._state != "ok":
                    log.info("metrics ingest reachable again; sending spooled batches")
                    self._state = "ok"
            elif outcome is _Outcome.TOO_LARGE and self._split_head(line):
                log.warning("metrics batch %s too large (413): split in two", batch_id)
            elif outcome in (_Outcome.REJECTED, _Outcome.TOO_LARGE):
                log.error(
                    "metrics ingest rejected batch %s with HTTP %s; it stays in %s", batch_id, status, self.spool_path
                )
                self._spool.reject_head()
            else:
                self._back_off(outcome, retry_after, status)
                return

    def _split_head(self, line: str) -> bool:
        body = json.loads(line)
        records = [("metrics", r) for r in body["metrics"]] + [("predictions", r) for r in body["predictions"]]
        if len(records) < 2:
            return False
        halves = (records[: len(records) // 2], records[len(records) // 2:])
        entries = []
        for half in halves:
            new = {
                "batch_id": str(uuid.uuid4()),
                "attempt": body.get("attempt", 1),
                "metrics": [r for kind, r in half if kind == "metrics"],
                "predictions": [r for kind, r in half if kind == "predictions"],
            }
            entries.append((new["batch_id"], json.dumps(new, separators=(",", ":"), allow_nan=False)))
        self._spool.replace_head(entries)
        return True

    def _back_off(self, outcome: _Outcome, retry_after: float | None, status: int | None) -> None:
        self._failures += 1
        if retry_after is not None:
            delay = retry_after
        elif outcome is _Outcome.BLOCKED:
            delay = min(MAX_BLOCKED_BACKOFF_S, 2.0 ** self._failures)
        else:
            delay = min(MAX_BACKOFF_S, 0.5 * 2.0 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        state = "blocked" if outcome is _Outcome.BLOCKED else "down"
        what = f"HTTP {status}" if status else "no answer"
        if self._state != state:
            level = logging.ERROR if outcome is _Outcome.BLOCKED else logging.WARNING
            log.log(
                level,
                "metrics ingest %s (%s) for job %s; spooling to %s and retrying in %.1fs",
                "refused the request" if outcome is _Outcome.BLOCKED else "unavailable",
                what,
                self.job_id,
                self.spool_path,
                delay,
            )
            self._state = state
        else:
            log.debug("metrics ingest still %s (%s); retrying in %.1fs", state, what, delay)

    def _timeout(self) -> float:
        if self._deadline is None:
            return self.request_timeout
        return max(0.1, min(self.request_timeout, self._deadline - time.monotonic()))

    def _post(self, line: str) -> tuple[_Outcome, float | None, int | None]:
        assert self._client is not None and self._url is not None
        try:
            response = self._client.post(
                self._url, content=line.encode("utf-8"), headers=self._headers, timeout=self._timeout()
            )
        except httpx.HTTPError as exc:
            log.debug("metrics POST failed: %s", type(exc).__name__)
            return _Outcome.RETRY, None, None
        status = response.status_code
        if 200 <= status < 300:
            return _Outcome.SENT, None, status
        retry_after = _retry_after(response.headers.get("Retry-After"))
        if status == 429 or status >= 500:
            return _Outcome.RETRY, retry_after, status
        if status == 413:
            return _Outcome.TOO_LARGE, None, status
        if status in (401, 403, 404):
            return _Outcome.BLOCKED, retry_after, status
        return _Outcome.REJECTED, None, status
