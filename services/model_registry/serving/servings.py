"""Servings as the registry keeps them: a row per serving (``servings``), an engine started for each in the
background, and a ``ServingChanged`` event at each change of state.

A serve command is handled quickly (the row, then a background start): an engine may take minutes to start, longer
than a message may stay unacknowledged. When the registry comes back after a stop or a crash it starts again every
serving that was starting or ready, so a serving that was accepted is not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Protocol

import asyncpg

from services.cloud.output import local_output
from shared.events import Message, ServeRequested, ServeStopRequested, ServingChanged
from shared.ids import derived_id
from shared.serving import Finding, ServerType, ServingState
from shared.settings import Settings

from .checks import check_adapter
from .engines import EngineFailed, Engines

log = logging.getLogger(__name__)
LIVE = (ServingState.STARTING.value, ServingState.READY.value)


class Publisher(Protocol):
    async def publish(self, message: Message) -> None: ...


class ServingRepository:
    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def create(self, cmd: ServeRequested) -> bool:
        """The row of a new serving, ``starting``; False when it exists (a redelivery) or the name is taken."""
        try:
            row = await self.pool.fetchrow(
                """INSERT INTO servings (id, user_id, model_id, name, server_type, state, request)
                   VALUES ($1, $2, $3, $4, $5, 'starting', $6) ON CONFLICT (id) DO NOTHING RETURNING id""",
                cmd.serving_id, cmd.user_id, cmd.model_id, cmd.name, cmd.server_type.value,
                cmd.model_dump(mode="json"))
        except asyncpg.UniqueViolationError:
            await self.pool.execute(
                """INSERT INTO servings (id, user_id, model_id, name, server_type, state, reason, request)
                   VALUES ($1, $2, $3, $4, $5, 'failed', $6, $7) ON CONFLICT (id) DO NOTHING""",
                cmd.serving_id, cmd.user_id, cmd.model_id, cmd.name, cmd.server_type.value,
                f"another serving of yours is named {cmd.name!r}; stop it (DELETE /api/servings/ID) or choose "
                "another name", cmd.model_dump(mode="json"))
            return False
        return row is not None

    async def tombstone(self, serving_id: str, user_id: str) -> None:
        """A stop that arrived before its serve command: the serving is stopped before it starts (the command,
        when it comes, finds the row and starts nothing)."""
        await self.pool.execute(
            """INSERT INTO servings (id, user_id, model_id, name, server_type, state, reason, request)
               VALUES ($1, $2, '00000000-0000-0000-0000-000000000000', $3, 'builtin', 'stopped',
                       'stopped on request before it started', '{}') ON CONFLICT (id) DO NOTHING""",
            serving_id, user_id, f"stopped-{serving_id}")

    async def get(self, serving_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT * FROM servings WHERE id = $1", serving_id)

    async def live(self) -> list[asyncpg.Record]:
        return await self.pool.fetch("SELECT * FROM servings WHERE state = ANY($1::text[]) ORDER BY created_at",
                                     list(LIVE))

    async def set_state(self, serving_id: str, state: ServingState, *, reason: str | None = None,
                        only_if: tuple[str, ...] = LIVE, **fields) -> bool:
        """Move a live serving to ``state`` (with the engine's address and details when ready)."""
        columns = {"base_url": None, "engine_model": None, "engine_key": None, "details": None, "findings": None}
        columns.update(fields)
        row = await self.pool.fetchrow(
            """UPDATE servings SET state = $2, reason = $3, updated_at = now(),
                      base_url = coalesce($4, base_url), engine_model = coalesce($5, engine_model),
                      engine_key = coalesce($6, engine_key), details = coalesce($7::jsonb, details),
                      findings = coalesce($8::jsonb, findings)
               WHERE id = $1 AND state = ANY($9::text[]) RETURNING id""",
            serving_id, state.value, reason, columns["base_url"], columns["engine_model"], columns["engine_key"],
            columns["details"], columns["findings"], list(only_if))
        return row is not None


def _on_this_machine(settings: Settings, cmd: ServeRequested) -> ServeRequested:
    """The command with its model's files on this machine: an output trained on another machine's provider is
    brought from the store (``local_output``)."""
    paths = {name: str(local_output(settings, value)) for name in ("adapter_path", "model_path")
             if (value := getattr(cmd, name))}
    return cmd.model_copy(update=paths)


def _findings(cmd: ServeRequested) -> list[Finding]:
    if not cmd.adapter_path:
        return []
    base = Path(cmd.base_model)
    return check_adapter(Path(cmd.adapter_path), base if base.is_dir() else None, cmd.server_type)


class Servings:
    """What the registry does with serve and stop commands."""

    def __init__(self, repo: ServingRepository, engines: Engines, bus: Publisher):
        self.repo, self.engines, self.bus = repo, engines, bus
        self.starting: dict[str, asyncio.Task] = {}

    async def _announce(self, cmd: ServeRequested, state: ServingState, reason: str | None = None,
                        findings: list[Finding] | None = None) -> None:
        event = ServingChanged(event_id=derived_id(cmd.serving_id, f"serving-{state.value}-{reason or ''}"),
                               job_id=cmd.job_id, serving_id=cmd.serving_id, user_id=cmd.user_id,
                               model_id=cmd.model_id, name=cmd.name, server_type=cmd.server_type, state=state,
                               reason=reason, findings=findings or [])
        try:
            await self.bus.publish(event)
        except Exception as exc:  # the row is what callers read; the event is for subscribers
            log.warning("serving %s: announcing %s failed: %s", cmd.serving_id, state.value, exc)

    async def requested(self, cmd: ServeRequested) -> None:
        if not await self.repo.create(cmd):
            row = await self.repo.get(cmd.serving_id)
            if row is not None and row["state"] == ServingState.FAILED.value:
                await self._announce(cmd, ServingState.FAILED, row["reason"])
            return
        self._start_in_background(cmd)

    def _start_in_background(self, cmd: ServeRequested) -> None:
        task = asyncio.create_task(self._start(cmd), name=f"serving-{cmd.serving_id}")
        self.starting[cmd.serving_id] = task
        task.add_done_callback(lambda _t: self.starting.pop(cmd.serving_id, None))

    async def _start(self, cmd: ServeRequested) -> None:
        try:
            cmd = await asyncio.to_thread(_on_this_machine, self.engines.settings, cmd)
            findings = await asyncio.to_thread(_findings, cmd)
        except Exception as exc:  # the serving must end with a reason, never stay starting
            log.exception("serving %s: its model's files could not be read", cmd.serving_id)
            await self._fail(cmd, f"the model's files could not be read: {type(exc).__name__}: {exc}", [])
            return
        errors = [f for f in findings if f.level == "error"]
        if errors:
            await self._fail(cmd, "; ".join(f"{f.field}: {f.message}" for f in errors), findings)
            return
        try:
            launched = await self.engines.start(cmd)
        except asyncio.CancelledError:
            raise
        except EngineFailed as exc:
            await self.engines.stop(cmd.serving_id, cmd.server_type, None)
            await self._fail(cmd, str(exc), findings)
            return
        except Exception as exc:
            log.exception("serving %s: the engine could not be started", cmd.serving_id)
            await self.engines.stop(cmd.serving_id, cmd.server_type, None)
            await self._fail(cmd, f"the engine could not be started: {type(exc).__name__}: {exc}", findings)
            return
        moved = await self.repo.set_state(
            cmd.serving_id, ServingState.READY, base_url=launched.base_url, engine_model=launched.engine_model,
            engine_key=launched.engine_key, details=launched.details,
            findings=[f.model_dump() for f in findings])
        if not moved:  # stopped while it started
            await self.engines.stop(cmd.serving_id, cmd.server_type, launched.engine_model)
            return
        log.info("serving %s (%s on %s) is ready", cmd.serving_id, cmd.name, cmd.server_type.value)
        await self._announce(cmd, ServingState.READY, findings=findings)

    async def _fail(self, cmd: ServeRequested, reason: str, findings: list[Finding]) -> None:
        log.warning("serving %s failed: %s", cmd.serving_id, reason.splitlines()[0])
        if await self.repo.set_state(cmd.serving_id, ServingState.FAILED, reason=reason,
                                     findings=[f.model_dump() for f in findings]):
            await self._announce(cmd, ServingState.FAILED, reason, findings)

    async def stop_requested(self, cmd: ServeStopRequested) -> None:
        row = await self.repo.get(cmd.serving_id)
        if row is None:
            await self.repo.tombstone(cmd.serving_id, cmd.user_id)
            return
        if row["user_id"] != cmd.user_id:
            return
        if task := self.starting.get(cmd.serving_id):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.engines.stop(cmd.serving_id, ServerType(row["server_type"]), row["engine_model"])
        if await self.repo.set_state(cmd.serving_id, ServingState.STOPPED, reason="stopped on request"):
            await self._announce(ServeRequested.model_validate(row["request"]), ServingState.STOPPED,
                                 "stopped on request")

    async def resume(self) -> None:
        """At start: bring back every serving that was starting or ready when the registry stopped."""
        for row in await self.repo.live():
            cmd = ServeRequested.model_validate(row["request"])
            await self.repo.set_state(cmd.serving_id, ServingState.STARTING, reason="the registry restarted")
            log.info("serving %s: starting its engine again", cmd.serving_id)
            self._start_in_background(cmd)

    async def close(self) -> None:
        for task in list(self.starting.values()):
            task.cancel()
        await self.engines.close()
