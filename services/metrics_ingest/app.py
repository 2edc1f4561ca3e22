"""The ingest HTTP API: ``POST /v1/jobs/{job_id}/batches`` with the job's bearer token."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, Field, ValidationError

from shared.events import MetricPoint, MetricsAppended, PredictionRecord, PredictionsAppended
from shared.service import add_health_responder, service_resources
from shared.settings import Settings
from shared.tokens import verify_job_token

from .repository import IngestRepository

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 8 * 1024 * 1024


class IngestBatch(BaseModel):
    batch_id: str = Field(min_length=1, max_length=200)
    metrics: list[MetricPoint] = Field(default_factory=list)
    predictions: list[PredictionRecord] = Field(default_factory=list)


class IngestAck(BaseModel):
    accepted_points: int
    accepted_predictions: int
    duplicate: bool


def job_auth(request: Request, job_id: uuid.UUID, authorization: Annotated[str | None, Header()] = None) -> str:
    """The job id of the path, once the bearer token proves the caller is that job's trainer."""
    scheme, _, token = (authorization or "").partition(" ")
    secret = request.app.state.settings.require_secret_key()
    if scheme.lower() != "bearer" or not token or not verify_job_token(secret, str(job_id), token):
        raise HTTPException(401, "a valid job token is required (Authorization: Bearer <job token>)")
    return str(job_id)


JobId = Annotated[str, Depends(job_auth)]


def create_app(settings: Settings) -> FastAPI:
    settings.require_secret_key()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with service_resources("metrics_ingest", settings, owns=("metrics_ingest",)) as ctx:
            add_health_responder(ctx.broker, "metrics_ingest")
            await ctx.broker.start()
            app.state.repo = IngestRepository(ctx.pool)
            app.state.broker = ctx.broker
            app.state.fanout = set()
            try:
                yield
            finally:
                await asyncio.gather(*app.state.fanout, return_exceptions=True)
                await ctx.broker.stop()

    app = FastAPI(title="TuneFleet metrics ingest", lifespan=lifespan)
    app.state.settings = settings

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ready": True}

    @app.post("/v1/jobs/{job_id}/batches", response_model=IngestAck)
    async def ingest(request: Request, job_id: JobId) -> IngestAck:
        length = int(request.headers.get("content-length") or 0)
        if length > MAX_BATCH_BYTES:
            raise HTTPException(413, f"batch of {length} bytes is over {MAX_BATCH_BYTES}; send smaller batches")
        try:
            batch = IngestBatch.model_validate_json(await request.body())
        except ValidationError as exc:
            raise HTTPException(422, exc.errors(include_url=False, include_context=False)) from exc
        fresh = await request.app.state.repo.store_batch(job_id, batch.batch_id, batch.metrics, batch.predictions)
        if fresh:
            _fan_out(request.app, job_id, batch)
        points = sum(len(m.values) for m in batch.metrics)
        return IngestAck(accepted_points=points if fresh else 0,
                         accepted_predictions=len(batch.predictions) if fresh else 0, duplicate=not fresh)

    return app


def _fan_out(app: FastAPI, job_id: str, batch: IngestBatch) -> None:
    """Publish stored points for live viewers without holding up the trainer's acknowledgement."""

    async def send() -> None:
        broker = app.state.broker
        try:
            if batch.metrics:
                msg = MetricsAppended(job_id=job_id, metrics=batch.metrics)
                await broker.publish(msg.model_dump(mode="json"), subject=msg.subject)
            if batch.predictions:
                msg = PredictionsAppended(job_id=job_id, predictions=batch.predictions)
                await broker.publish(msg.model_dump(mode="json"), subject=msg.subject)
        except Exception:  # live fan-out is best effort; the rows are stored
            log.exception("live fan-out for job %s failed", job_id)

    task = asyncio.create_task(send())
    app.state.fanout.add(task)
    task.add_done_callback(app.state.fanout.discard)
