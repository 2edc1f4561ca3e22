"""Preflight: a configuration dry-run on this machine's CPU, in a process of its own, within the user's share."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

from fastapi import Request

from shared.environment import minimal_environment
from shared.errors import ServiceUnavailable
from shared.settings import Settings
from shared.storage import copy_out, key_of
from shared.trainer_users import RunAs, TrainerUsers

PREFLIGHT_TIMEOUT_S = 600.0


async def run_preflight_process(config_json: str, data_path: str, data_format: str,
                                run_as: RunAs | None = None, users: TrainerUsers | None = None,
                                python: str | None = None, settings: Settings | None = None) -> dict:
    """Run ``python -m trainer.preflight`` on the CPU of this machine and return its JSON report. It runs with a
    minimal environment (none of the server's settings or credentials) in a folder of its own; with ``run_as``,
    as that uid, on a copy of the data in that folder (the uploads themselves are the server's alone)."""
    with tempfile.TemporaryDirectory(prefix="tunefleet-preflight-") as work:
        config_path = os.path.join(work, "config.json")
        with open(config_path, "w", encoding="utf-8") as f:  # noqa: ASYNC230 - a small local file
            f.write(config_json)
        env, extra = minimal_environment(), {}
        if key_of(data_path) is not None or (run_as is not None and users is not None):
            copy = os.path.join(work, "data.jsonl")
            await asyncio.to_thread(copy_out, settings or Settings(), data_path, copy)
            data_path = copy
        if run_as is not None and users is not None:
            await asyncio.to_thread(users.hand_over, run_as, Path(work))
            env["HOME"], extra = str(run_as.home), run_as.popen()
        proc = await asyncio.create_subprocess_exec(
            python or sys.executable, "-m", "trainer.preflight", "--config", config_path, "--data", data_path,
            "--format", data_format, "--work-dir", work, "--json", cwd=work, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
            **extra)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), PREFLIGHT_TIMEOUT_S)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise ServiceUnavailable(f"preflight did not finish in {PREFLIGHT_TIMEOUT_S:.0f}s") from exc
        except asyncio.CancelledError:  # the client went away: its slot is given back, so is the CPU
            proc.kill()
            await asyncio.shield(proc.wait())
            raise
    try:
        return json.loads(out.decode().strip().splitlines()[-1])
    except (IndexError, ValueError) as exc:
        tail = err.decode(errors="replace")[-2000:]
        raise ServiceUnavailable(f"preflight ended without a report (exit {proc.returncode}): {tail}") from exc


async def run_user_preflight(request: Request, settings: Settings, user: str, config_json: str, data_path: str,
                             data_format: str) -> dict:
    """``run_preflight_process`` within the user's share: at most ``max_preflights_per_user`` at once (429)."""
    users: TrainerUsers = request.app.state.trainer_users
    async with request.app.state.quotas.preflights.hold(user):
        run_as = await asyncio.to_thread(users.for_user, user)
        return await run_preflight_process(config_json, data_path, data_format, run_as, users,
                                           settings.trainer_python, settings)
