"""Registry handlers: plain functions of a message and named dependencies."""

from __future__ import annotations

from typing import Protocol

import asyncpg

from shared.events import JobStatusChanged, Message, ModelRegistered
from shared.ids import derived_id
from shared.states import JobStatus


class Publisher(Protocol):
    async def publish(self, message: Message) -> None: ...


class ModelRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def add(self, m: ModelRegistered, *, provider: str, final_eval_loss: float | None) -> None:
        await self.pool.execute(
            """INSERT INTO models (id, job_id, user_id, name, base_model, adapter_path, method, lora_r, lora_alpha,
                                   final_loss, final_eval_loss, training_seconds, dataset_rows, cost_usd, provider)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
               ON CONFLICT (job_id) DO NOTHING""",
            m.model_id, m.job_id, m.user_id, m.name, m.base_model, m.adapter_path, m.method, m.lora_r,
            m.lora_alpha, m.final_loss, final_eval_loss, m.training_seconds, m.dataset_rows, m.cost_usd, provider)


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
    await models.add(registered, provider=evt.provider,
                     final_eval_loss=result.final_eval_loss if result else None)
    await bus.publish(registered)
