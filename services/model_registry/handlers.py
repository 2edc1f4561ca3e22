"""Registry handlers: plain functions of a message and named dependencies."""

from __future__ import annotations

from typing import Protocol

import asyncpg

from shared.events import JobStatusChanged, Message, ModelRegistered, ServeRequested
from shared.ids import derived_id
from shared.serving import ServeSection
from shared.states import JobStatus


class Publisher(Protocol):
    async def publish(self, message: Message) -> None: ...


class ModelRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def add(self, m: ModelRegistered, *, provider: str, final_eval_loss: float | None, config: dict,
                  dataset_id: str | None) -> int:
        """Register ``m`` as the next version of its name for its user (1, 2, ...); returns the version. A model
        already registered for the job keeps its version."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('models:' || $1 || ':' || $2))", m.user_id,
                               m.name)
            existing = await conn.fetchval("SELECT version FROM models WHERE job_id = $1", m.job_id)
            if existing is not None:
                return existing
            version = await conn.fetchval(
                "SELECT coalesce(max(version), 0) + 1 FROM models WHERE user_id = $1 AND name = $2", m.user_id, m.name)
            await conn.execute(
                """INSERT INTO models (id, job_id, user_id, name, base_model, adapter_path, method, lora_r, lora_alpha,
                                       final_loss, final_eval_loss, training_seconds, dataset_rows, cost_usd,
                                       provider, version, config, dataset_id)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)""",
                m.model_id, m.job_id, m.user_id, m.name, m.base_model, m.adapter_path, m.method, m.lora_r,
                m.lora_alpha, m.final_loss, final_eval_loss, m.training_seconds, m.dataset_rows, m.cost_usd, provider,
                version, config, dataset_id)
            return version


async def handle_job_status(evt: JobStatusChanged, *, models: ModelRepository, bus: Publisher) -> None:
    if evt.status is not JobStatus.COMPLETED or evt.config is None:
        return
    config, result = evt.config, evt.result
    lora = config.training.lora
    registered = ModelRegistered(
        event_id=derived_id(evt.job_id, "model-registered"),
        job_id=evt.job_id,
        model_id=derived_id(evt.job_id, "model"),
        user_id=evt.user_id,
        name=config.name,
        base_model=config.model.base_model,
        adapter_path=result.adapter_path if result else None,
        method=config.training.method.value,
        lora_r=lora.r if lora.enabled else None,
        lora_alpha=lora.alpha if lora.enabled else None,
        final_loss=result.final_loss if result else None,
        training_seconds=result.training_seconds if result else None,
        dataset_rows=evt.dataset_rows,
        cost_usd=evt.cost_usd,
    )
    version = await models.add(registered, provider=evt.provider,
                               final_eval_loss=result.final_eval_loss if result else None,
                               config=config.model_dump(mode="json"), dataset_id=config.data.dataset_id)
    registered = registered.model_copy(update={"version": version})
    await bus.publish(registered)
    if config.serve is not None:
        await bus.publish(serve_command(registered, config.serve))


def serve_command(model: ModelRegistered, serve: ServeSection) -> ServeRequested:
    """The serve command of a job whose configuration asks to be served when it completes (one per job)."""
    full_model = model.adapter_path if model.lora_r is None else None  # a full fine-tune is saved as a model
    return ServeRequested(
        event_id=derived_id(model.job_id, "serve-requested"), job_id=model.job_id,
        serving_id=derived_id(model.job_id, "serving"), user_id=model.user_id, model_id=model.model_id,
        name=serve.name or model.name, server_type=serve.server_type,
        adapter_path=model.adapter_path if model.lora_r is not None else None,
        model_path=full_model, base_model=model.base_model, options=serve.config)
