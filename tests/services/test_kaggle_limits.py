"""Kaggle's weekly GPU quota and session limit, checked from TuneFleet's own jobs before anything is pushed."""

from __future__ import annotations

import uuid

import pytest

from services.gateway.kaggle_limits import check_kaggle_limits, gpu_hours_this_week
from services.gateway.schemas import KaggleDeploymentRequest
from shared.config import TrainingConfig
from shared.errors import ValidationFailed

CONFIG = TrainingConfig.model_validate({"model": {"base_model": "/kaggle/input/weights"}, "data": {"dataset_id": "d"}})


async def _job(pool, user: str, *, hours_ago_started: float, hours: float | None, gpu: bool = True,
               provider: str = "kaggle") -> None:
    """A job of ``user`` that started ``hours_ago_started`` ago and ran ``hours`` (None: still running)."""
    await pool.execute(
        """INSERT INTO jobs (id, user_id, provider, name, config, dataset_path, dataset_format, dataset_rows,
                             provider_options, status, clock_started_at, finished_at)
           VALUES ($1, $2, $3, 'j', '{}'::jsonb, '/d', 'instruction', 1, $4, 'completed',
                   now() - make_interval(secs => $5),
                   CASE WHEN $6::float8 IS NULL THEN NULL
                        ELSE now() - make_interval(secs => $5) + make_interval(secs => $6) END)""",
        uuid.uuid4(), user, provider, {"enable_gpu": gpu}, hours_ago_started * 3600,
        None if hours is None else hours * 3600)


def _body(**extra) -> KaggleDeploymentRequest:
    return KaggleDeploymentRequest.model_validate({"config_id": "c", "notebook_title": "A Kaggle run",
                                                   "dataset_sources": ["alice/weights"], **extra})


async def test_the_week_counts_gpu_time_of_the_last_seven_days_only(pool):
    await _job(pool, "alice", hours_ago_started=30, hours=5)            # in the week: 5 h
    await _job(pool, "alice", hours_ago_started=7 * 24 + 2, hours=4)    # 2 h of it in the week
    await _job(pool, "alice", hours_ago_started=3, hours=None)          # running: 3 h so far
    await _job(pool, "alice", hours_ago_started=10, hours=6, gpu=False)  # CPU: free of the quota
    await _job(pool, "alice", hours_ago_started=10, hours=6, provider="runpod")
    await _job(pool, "bob", hours_ago_started=10, hours=6)
    assert await gpu_hours_this_week(pool, "alice") == pytest.approx(10.0, abs=0.01)
    assert await gpu_hours_this_week(pool, "carol") == 0.0


async def test_a_run_past_the_quota_or_the_session_is_refused_saying_which(pool, migrated):
    await _job(pool, "alice", hours_ago_started=48, hours=25)
    # The model is attached on Kaggle, so the run is not estimated: its max_duration_hours is what it may take.
    with pytest.raises(ValidationFailed) as caught:
        await check_kaggle_limits(migrated, pool, None, "alice", _body(max_duration_hours=8), CONFIG)
    assert caught.value.field == "enable_gpu" and "weekly GPU quota is 30 h" in caught.value.message
    assert "used 25.0 h" in caught.value.message
    with pytest.raises(ValidationFailed) as caught:
        await check_kaggle_limits(migrated, pool, None, "alice", _body(max_duration_hours=13), CONFIG)
    assert caught.value.field == "max_duration_hours" and "session limit of 12 h" in caught.value.message
    with pytest.raises(ValidationFailed) as caught:
        await check_kaggle_limits(migrated, pool, None, "alice", _body(max_duration_hours=9.5,
                                                                       machine_shape="TpuV5E8"), CONFIG)
    assert "session limit of 9 h" in caught.value.message
    # Within both: the kernel's session time-out is the run's own limit.
    assert await check_kaggle_limits(migrated, pool, None, "alice", _body(max_duration_hours=4), CONFIG) == 4 * 3600
    assert await check_kaggle_limits(migrated, pool, None, "alice", _body(enable_gpu=False), CONFIG) == 12 * 3600
