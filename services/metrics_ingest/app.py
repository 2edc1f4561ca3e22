"""The ingest HTTP API: ``POST /v1/jobs/{job_id}/batches`` with the job's bearer token.

Answers, in the order they are checked:

* 401 without the job's token;
* 413 when the body is over ``max_batch_bytes``, or holds more than ``max_batch_points`` metric values or
  ``max_batch_predictions`` predictions: nothing was stored, split the batch;
* 429 with ``Retry-After`` (seconds) when the job sends faster than ``job_points_per_second`` or the process
  already handles ``max_in_flight`` requests: nothing was stored, send the same batch later;
* 422 naming each bad field: nothing was stored, the batch will never be accepted;
* 503 with ``Retry-After`` when PostgreSQL cannot be reached: nothing was stored;
* 200 once the batch is committed in PostgreSQL (``duplicate`` when this job's batch id was stored before).

Every error body is ``{"detail": {"code", "message", "field"?, "errors"?}}``. The body encodings are
described in ``batch.py``. Several processes may serve the same database; the keys in ``repository.py``
keep each point stored once.
"""

from __future__ import annotations

import logging
import uuid
from contextlib import asynccontextmanager
from typing import Annotated

import asyncpg
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel

from shared.bus import connect
from shared.service import add_health_responder, service_resources
from shared.settings import Settings
from shared.tokens import verify_job_token

from .batch import Batch, BatchInvalid, parse_batch
from .config import IngestConfig
from .fanout import LiveFanout
from .limits import Throttle
from .repository import IngestRepository

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = IngestConfig.model_fields["max_batch_bytes"].default
DB_UNAVAILABLE = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                  asyncpg.OperatorInterventionError, asyncpg.TooManyConnectionsError)


class IngestAck(BaseModel):
    accepted_points: int
    accepted_predictions: int
    duplicate: bool


def _error(status: int, code: str, message: str, *, field: str | None = None, retry_after: int | None = None,
           errors: list | None = None) -> HTTPException:
    detail: dict = {"code": code, "message": message}
    if field:
        detail["field"] = field
    if errors:
        detail["errors"] = errors
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return HTTPException(status, detail, headers=headers)


def job_auth(request: Request, job_id: uuid.UUID, authorization: Annotated[str | None, Header()] = None) -> str:
    """The job id of the path, once the bearer token proves the caller is that job's trainer."""
    scheme, _, token = (authorization or "").partition(" ")
    secret = request.app.state.settings.require_secret_key()
    if scheme.lower() != "bearer" or not token or not verify_job_token(secret, str(job_id), token):
        raise _error(401, "unauthorized", "a valid job token is required (Authorization: Bearer <job token>)")
    return str(job_id)


JobId = Annotated[str, Depends(job_auth)]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as more than ``limit`` bytes arrived."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(f"a body of more than {limit} bytes", f"{limit} bytes", "body")
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(what: str, limit: str, field: str) -> HTTPException:
    return _error(413, "payload_too_large", f"{what} is over the limit of {limit}; split the batch and send "
                                            "the parts as new batches", field=field)


def check_size(batch: Batch, config: IngestConfig) -> None:
    if batch.sent_points > config.max_batch_points:
        raise _too_large(f"a batch of {batch.sent_points} metric values", f"{config.max_batch_points} values",
                         "metrics")
    if len(batch.predictions) > config.max_batch_predictions:
        raise _too_large(f"a batch of {len(batch.predictions)} predictions",
                         f"{config.max_batch_predictions} predictions", "predictions")


def create_app(settings: Settings, config: IngestConfig | None = None) -> FastAPI:
    settings.require_secret_key()
    config = config or IngestConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with service_resources("metrics_ingest", settings, owns=("metrics_ingest",)) as ctx:
            add_health_responder(ctx.broker, "metrics_ingest", ctx.pool)
            await ctx.broker.start()
            nc = await connect(settings.require_nats_url(), "tunefleet-metrics-ingest-live")
            fanout = LiveFanout(nc, config.live_queue_batches)
            fanout.start()
            app.state.repo, app.state.fanout = IngestRepository(ctx.pool), fanout
            try:
                yield
            finally:
                await fanout.close()
                await nc.close()
                await ctx.broker.stop()

    app = FastAPI(title="TuneFleet metrics ingest", lifespan=lifespan)
    app.state.settings = settings
    app.state.throttle = Throttle(config.job_points_per_second, config.job_burst_points, config.max_in_flight)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ready": True}

    @app.post("/v1/jobs/{job_id}/batches", response_model=IngestAck)
    async def ingest(request: Request, job_id: JobId) -> IngestAck:
        """Store one batch of metric points and predictions; see the module doc for every answer."""
        throttle: Throttle = request.app.state.throttle
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_batch_bytes:
            raise _too_large(f"a body of {int(declared)} bytes", f"{config.max_batch_bytes} bytes", "body")
        wait = throttle.retry_after(job_id)
        if wait is not None:
            raise _error(429, "too_many_requests", f"job {job_id} sends faster than ingest takes; send the same "
                                                   f"batch again in {wait}s", retry_after=wait)
        with throttle.slot():
            body = await read_body(request, config.max_batch_bytes)
            try:
                batch = parse_batch(body)
            except BatchInvalid as exc:
                raise _error(422, "validation_failed", str(exc), field=exc.errors[0]["field"],
                             errors=exc.errors) from exc
            check_size(batch, config)
            throttle.take(job_id, batch.sent_points)
            try:
                fresh = await request.app.state.repo.store_batch(job_id, batch)
            except (asyncpg.CharacterNotInRepertoireError, asyncpg.UntranslatableCharacterError) as exc:
                raise _error(422, "validation_failed", f"the batch holds text PostgreSQL cannot store: {exc}",
                             field="body") from exc
            except DB_UNAVAILABLE as exc:
                log.warning("batch %s of job %s not stored: %s", batch.batch_id, job_id, exc)
                raise _error(503, "service_unavailable", "the metrics database is unavailable; send the same "
                                                         "batch again later", retry_after=1) from exc
        if fresh:
            request.app.state.fanout.submit(job_id, batch)
        return IngestAck(accepted_points=batch.points if fresh else 0,
                         accepted_predictions=len(batch.predictions) if fresh else 0, duplicate=not fresh)

    return app
