"""Retrying a job: a new job deployed as the original was.

The new job gets what the original's deploy recorded (``deploy_requests.message``): its configuration as it was
trained (the snapshot, not the saved configuration's text now, which may have changed since), its data set, its
provider and provider options (GPU type and count, volume, image, sealed environment ...), its automatic placement
(the same offers, cheapest first again) and its budget controls. What may have changed since is checked again as a
deploy checks it: the data set still exists and fits the method, the server's policy, the stored credentials, the
addresses a cloud workload calls back, the local-jobs quota and, on Kaggle, its session and weekly limits. The
dry-run preflight is not repeated: the configuration is the one the original ran.

Any job of one's own can be retried, whatever its state: a retry is a new job, and the original goes on (stop it
with POST /api/training/jobs/{job_id}/stop to replace it).
"""

from __future__ import annotations

import asyncpg
from pydantic import ValidationError

from shared.budget import BudgetControls
from shared.bus import Bus
from shared.errors import Conflict, NotFound
from shared.events import DeployRequested
from shared.settings import Settings

from . import repository
from .deploying import request_deploy, require_credentials, require_reachable_urls
from .kaggle_limits import attached, check_kaggle_limits
from .schemas import DeploymentResponse, KaggleDeploymentRequest
from .status import deployment_response


async def retry_job(settings: Settings, pool: asyncpg.Pool, bus: Bus, broker, user_id: str,
                    job_id: str) -> DeploymentResponse:
    """Deploy a new job as the user's job ``job_id`` was deployed; NotFound for anyone else's."""
    message = await repository.deploy_message(pool, user_id, job_id)
    if message is None:
        raise NotFound(f"job {job_id} not found; GET /api/training/jobs lists yours", field="job_id")
    try:
        original = DeployRequested.model_validate(message)
    except ValidationError as exc:
        raise Conflict(f"job {job_id} was deployed by an older TuneFleet whose record cannot be read again; deploy "
                       "its configuration anew (POST /api/training/deploy/...)", field="job_id") from exc
    provider, options, folders = original.provider, dict(original.provider_options), ()
    if provider != "local":
        if provider != "kaggle" or options.get("enable_internet", True):
            require_reachable_urls(settings, provider)
        await require_credentials(pool, user_id, provider)
    budget = BudgetControls(budget_limit=original.budget_limit_usd, alert_threshold=original.alert_threshold_pct,
                            auto_stop_on_budget=original.auto_stop_on_budget,
                            max_duration_hours=original.max_duration_hours, notify_email=original.notify_email)
    if provider == "kaggle":
        body = KaggleDeploymentRequest.model_validate({
            **{k: v for k, v in options.items() if k in KaggleDeploymentRequest.model_fields},
            **budget.model_dump(), "config": original.config})
        options["session_timeout_s"] = await check_kaggle_limits(settings, pool, broker, user_id, body,
                                                                 original.config)
        folders = attached(body)
    accepted = await request_deploy(settings, pool, bus, user_id=user_id, provider=provider, config=original.config,
                                    saved=None, provider_options=options, budget=budget,
                                    placement=original.placement, attached=folders)
    new_id = accepted.command.job_id
    answer = deployment_response(settings, new_id, provider, options, original.config, accepted.created_at)
    return answer.model_copy(update={"placement": original.placement, "message": (
        f"retry of job {job_id} accepted as job {new_id}; follow GET /api/training/jobs/{new_id}")})
