"""Kaggle's limits, checked before anything is pushed: a kernel that Kaggle would cut off or refuse is refused here,
with the limit it would pass and the fix.

* The session limit: Kaggle ends a CPU or GPU session after 12 hours (TPU: 9). The estimate of the run on the
  chosen accelerator, and ``max_duration_hours``, must stay under it; the kernel's ``session_timeout_s`` is set to
  the smaller of the two.
* The weekly GPU quota (about 30 hours per account): the user's Kaggle GPU time of the last 7 days, from
  TuneFleet's own jobs, plus this run's estimate must stay under ``kaggle_weekly_gpu_hours``. Kaggle's API does not
  say what is left, and time the account spent outside TuneFleet is not seen: a push Kaggle refuses for its
  quota still fails the job, with that reason.
* No internet, no Hub: a kernel without internet cannot download a base model by its hub id; it must come from
  ``model_sources`` or ``dataset_sources`` (a /kaggle/input/... path). Nor can it reach an RLHF judge.

A base model in an attached source (``/kaggle/input/<source>/...``) is the kernel's, not this server's: the server
cannot read its config, so such a run is neither estimated (only the quota already used is checked, and the
session time-out bounds it) nor preflighted.
"""

from __future__ import annotations

from pathlib import PurePosixPath

import asyncpg

from shared.config import TrainingConfig
from shared.errors import ValidationFailed
from shared.settings import Settings

from .deploying import resolve_data
from .estimating import estimate_with_offers
from .policy import attached_to
from .schemas import KaggleDeploymentRequest

KAGGLE_INPUT = "/kaggle/input"

DEFAULT_SHAPE = "NvidiaTeslaT4"
TPU_SESSION_HOURS = 9.0


async def gpu_hours_this_week(pool: asyncpg.Pool, user_id: str) -> float:
    """The user's Kaggle GPU time of the last 7 days: each GPU job's time from its first provisioning or running
    report (or its start) to its end (or now), within the week."""
    seconds = await pool.fetchval(
        """SELECT COALESCE(sum(extract(epoch FROM COALESCE(finished_at, now())
                                   - GREATEST(COALESCE(clock_started_at, started_at), now() - interval '7 days'))), 0)
           FROM jobs WHERE user_id = $1 AND provider = 'kaggle'
             AND COALESCE(provider_options->>'enable_gpu', 'true') = 'true'
             AND COALESCE(clock_started_at, started_at) IS NOT NULL
             AND COALESCE(finished_at, now()) > now() - interval '7 days'""", user_id)
    return max(float(seconds or 0.0), 0.0) / 3600.0


def attached(body: KaggleDeploymentRequest) -> tuple[str, ...]:
    """The folders Kaggle fills with the request's sources: /kaggle/input/<slug> for a dataset owner/slug, and
    /kaggle/input/<model> for a model owner/model/framework/variation."""
    return tuple(dict.fromkeys(f"{KAGGLE_INPUT}/{source.split('/')[1]}"
                               for source in (*body.dataset_sources, *body.model_sources)))


def model_attached(body: KaggleDeploymentRequest, config: TrainingConfig) -> bool:
    return attached_to(config.model.base_model, attached(body))


def _hub_id(base_model: str) -> bool:
    path = PurePosixPath(base_model)
    return not path.is_absolute() and not base_model.startswith((".", "~"))


def check_offline(config: TrainingConfig) -> None:
    base = config.model.base_model
    if _hub_id(base):
        raise ValidationFailed(
            f"model.base_model {base!r} is a Hugging Face Hub id, and with enable_internet false the Kaggle kernel "
            "cannot download it: attach the model with model_sources (or a dataset with dataset_sources) and set "
            "model.base_model to its folder under /kaggle/input/, or set enable_internet true",
            field="model.base_model")
    if config.training.rlhf.judge_url:
        raise ValidationFailed("training.rlhf.judge_url cannot be reached from a Kaggle kernel without internet; "
                               "set enable_internet true or train on another provider", field="enable_internet")


async def check_kaggle_limits(settings: Settings, pool: asyncpg.Pool, broker, user_id: str,
                              body: KaggleDeploymentRequest, config: TrainingConfig) -> int:
    """Refuse what Kaggle would cut off or refuse; the kernel's session time-out in seconds otherwise."""
    if not body.enable_internet:
        check_offline(config)
    shape = body.machine_shape or DEFAULT_SHAPE
    session_h = TPU_SESSION_HOURS if shape.startswith("Tpu") else settings.kaggle_session_hours
    if body.max_duration_hours is not None and body.max_duration_hours > session_h:
        raise ValidationFailed(f"max_duration_hours {body.max_duration_hours:g} is past Kaggle's session limit of "
                               f"{session_h:g} h for this accelerator; ask for {session_h:g} or less",
                               field="max_duration_hours")
    hours = None
    if body.enable_gpu and not model_attached(body, config):
        data = await resolve_data(settings, pool, user_id, config, attached(body))
        answer, _ = await estimate_with_offers(broker, pool, user_id, config, data, only="kaggle")
        candidate = next((c for c in answer.candidates if c.gpu_type == shape), None)
        if candidate is not None and not candidate.fits:
            raise ValidationFailed(f"the job does not fit Kaggle's {candidate.description}: {candidate.reason}",
                                   field="machine_shape")
        hours = candidate.hours if candidate is not None else None
    if hours is not None and hours > session_h:
        raise ValidationFailed(
            f"the run needs about {hours:.1f} h on Kaggle's {shape}, past Kaggle's session limit of {session_h:g} h: "
            "train fewer steps (training.max_steps or num_epochs), or deploy on RunPod or Lambda",
            field="training.max_steps")
    if body.enable_gpu:
        used = await gpu_hours_this_week(pool, user_id)
        needed = hours if hours is not None else (body.max_duration_hours or 0.0)
        if used + needed > settings.kaggle_weekly_gpu_hours:
            raise ValidationFailed(
                f"Kaggle's weekly GPU quota is {settings.kaggle_weekly_gpu_hours:g} h: your Kaggle GPU jobs used "
                f"{used:.1f} h in the last 7 days and this run needs about {needed:.1f} h more; wait for the quota "
                "to renew, set enable_gpu false, or deploy on another provider", field="enable_gpu")
    limit_h = min(session_h, body.max_duration_hours or session_h)
    return int(limit_h * 3600)
