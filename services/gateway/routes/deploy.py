from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request

from shared.config import TrainingConfig
from shared.disk import volume_gb
from shared.errors import NotFound, ValidationFailed
from shared.providers import SEALED_ENVIRONMENT, seal_environment

from .. import views
from ..deploying import (
    Chosen,
    chosen_configuration,
    request_deploy,
    require_credentials,
    require_reachable_urls,
    resolve_data,
)
from ..deps import BrokerDep, BusDep, CurrentUser, PoolDep, SettingsDep
from ..estimating import estimate_with_offers
from ..kaggle_limits import attached, check_kaggle_limits, model_attached
from ..placing import AUTO, default_options, place
from ..preflighting import run_user_preflight
from ..schemas import (
    AutoDeploymentRequest,
    DeploymentRequest,
    DeploymentResponse,
    HFSpacesDeploymentRequest,
    JobPublic,
    KaggleDeploymentRequest,
    LambdaDeploymentRequest,
    LocalDeploymentRequest,
    RunPodDeploymentRequest,
)
from ..status import deployment_response, job_public

router = APIRouter(prefix="/api/training/deploy", tags=["deploy"])

Provider = Literal["local", "runpod", "lambda", "kaggle", "hf-spaces"]
#: The route's name of a provider → the provider service's.
SERVICE_NAMES = {"hf-spaces": "hfspaces"}


async def _deploy(provider: str, body: DeploymentRequest, chosen: Chosen, user: str, pool, bus, settings,
                  options: dict, attached_folders: tuple[str, ...] = ()) -> DeploymentResponse:
    config = chosen.config
    accepted = await request_deploy(settings, pool, bus, user_id=user, provider=provider, config=config,
                                    saved=chosen.saved, provider_options=options, budget=body.budget_controls(),
                                    attached=attached_folders)
    return deployment_response(settings, accepted.command.job_id, provider, options, config, accepted.created_at)


@router.post("/local", status_code=202, response_model=DeploymentResponse)
async def deploy_local(body: LocalDeploymentRequest, user: CurrentUser, pool: PoolDep, bus: BusDep,
                       settings: SettingsDep) -> DeploymentResponse:
    """Train on this machine. The answer comes once the request is stored; follow it by ``job_id``."""
    return await _deploy("local", body, await chosen_configuration(pool, user, body), user, pool, bus, settings, {})


async def _deploy_to_cloud(provider: str, body: RunPodDeploymentRequest | LambdaDeploymentRequest, request: Request,
                           user: str, pool, bus, settings, broker, gpu_count: int | None = None) -> DeploymentResponse:
    require_reachable_urls(settings, provider)
    chosen = await chosen_configuration(pool, user, body)
    config = chosen.config
    if gpu_count is not None and gpu_count != config.training.gpu_count:
        # The pod's GPUs are what the trainer spreads over (accelerate launch when more than one).
        config = config.model_copy(update={"training": config.training.model_copy(update={"gpu_count": gpu_count})})
    await require_credentials(pool, user, provider)
    options = body.provider_options()
    if provider == "runpod":
        options["volume_size_gb"] = _volume_for(config, body.volume_size_gb)
        if body.secret_environment_variables:
            options[SEALED_ENVIRONMENT] = seal_environment(settings, body.secret_environment_variables)
    chosen = Chosen(config, chosen.saved)
    if options.get("gpu_type") == AUTO or options.get("instance_type") == AUTO:
        return await _deploy_placed(body, chosen, request, user, pool, bus, settings, broker, {provider: options})
    if body.preflight:
        await _preflight(request, settings, pool, user, config)
    return await _deploy(provider, body, chosen, user, pool, bus, settings, options)


async def _preflight(request: Request, settings, pool, user: str, config: TrainingConfig) -> None:
    data = await resolve_data(settings, pool, user, config)
    report = await run_user_preflight(request, settings, user, config.model_dump_json(), data.path, data.format.value)
    if not report.get("ok"):
        raise ValidationFailed(f"preflight failed: {report.get('error_message') or report}",
                               field=report.get("error_field") or "config", details={"preflight": report})


async def _deploy_placed(body: DeploymentRequest, chosen: Chosen, request: Request, user: str, pool, bus, settings,
                         broker, options: dict[str, dict],
                         max_usd_per_hour: float | None = None) -> DeploymentResponse:
    """Deploy on the cheapest offer that fits among ``options``' providers; the others are kept to fall back on."""
    config = chosen.config
    data = await resolve_data(settings, pool, user, config)
    only = next(iter(options)) if len(options) == 1 else None
    answer, unanswered = await estimate_with_offers(broker, pool, user, config, data, only=only)
    placement = place(answer.candidates, options, unanswered=unanswered, max_usd_per_hour=max_usd_per_hour)
    first = placement.offers[0]
    require_reachable_urls(settings, first.provider)
    if getattr(body, "preflight", True):
        await _preflight(request, settings, pool, user, config)
    accepted = await request_deploy(settings, pool, bus, user_id=user, provider=first.provider, config=config,
                                    saved=chosen.saved, provider_options=first.provider_options,
                                    budget=body.budget_controls(), placement=placement)
    answer = deployment_response(settings, accepted.command.job_id, first.provider, first.provider_options, config,
                                 accepted.created_at)
    price = f"${first.cost_per_hour:.2f}/h" if first.cost_per_hour is not None else "no price"
    return answer.model_copy(update={"placement": placement, "message": (
        f"placed on {first.provider} {first.gpu} ({price}, about ${first.estimated_cost or 0:.2f} in all), the "
        f"cheapest of {len(placement.offers) + len(placement.rejected)} offers; {answer.message}")})


@router.post("/auto", status_code=202, response_model=DeploymentResponse)
async def deploy_auto(body: AutoDeploymentRequest, request: Request, user: CurrentUser, pool: PoolDep, bus: BusDep,
                      settings: SettingsDep, broker: BrokerDep) -> DeploymentResponse:
    """Train wherever it costs least: the estimate (POST /api/training/estimate) over every offer of the providers
    whose credentials you stored (GET /api/gpus), the cheapest whole run first among those it fits on and that have
    capacity. When that provider has no machine after all, the job moves to the next offer. The job's ``placement``
    records the offers, the one in use and why each other was passed over."""
    chosen = await chosen_configuration(pool, user, body)
    defaults = default_options(chosen.config)
    options = defaults if body.provider == AUTO else {body.provider: defaults[body.provider]}
    return await _deploy_placed(body, chosen, request, user, pool, bus, settings, broker, options,
                                max_usd_per_hour=body.max_usd_per_hour)


def _volume_for(config: TrainingConfig, asked: int | None) -> int:
    """The pod's volume holds the model, its checkpoints and the trainer's venv: refuse one too small for them."""
    needed = volume_gb(config)
    if asked is not None and asked < needed:
        raise ValidationFailed(f"volume_size_gb {asked} is too small for {config.model.base_model}: its download, "
                               f"checkpoints and the trainer need about {needed} GB; ask for at least {needed} or "
                               "leave it unset", field="volume_size_gb")
    return asked or needed


@router.post("/runpod", status_code=202, response_model=DeploymentResponse)
async def deploy_runpod(body: RunPodDeploymentRequest, request: Request, user: CurrentUser, pool: PoolDep,
                        bus: BusDep, settings: SettingsDep, broker: BrokerDep) -> DeploymentResponse:
    """Train on a RunPod pod. Your RunPod key must be stored first (PUT /api/secrets/runpod). Unless
    ``preflight`` is false, the configuration is first dry-run on this machine's CPU and refused with 422
    when it fails, before any GPU time is paid for. ``gpu_type: "auto"`` places the job on the RunPod GPU where the
    whole run costs least (as POST /api/training/deploy/auto does over every provider)."""
    return await _deploy_to_cloud("runpod", body, request, user, pool, bus, settings, broker,
                                  gpu_count=body.gpu_count)


@router.post("/lambda", status_code=202, response_model=DeploymentResponse)
async def deploy_lambda(body: LambdaDeploymentRequest, request: Request, user: CurrentUser, pool: PoolDep,
                        bus: BusDep, settings: SettingsDep, broker: BrokerDep) -> DeploymentResponse:
    """Train on a Lambda Cloud instance, reached over SSH. Store your key first (PUT /api/secrets/lambda);
    preflight as for RunPod. ``instance_type: "auto"`` places it on the cheapest instance type that fits."""
    return await _deploy_to_cloud("lambda", body, request, user, pool, bus, settings, broker)


@router.post("/kaggle", status_code=202, response_model=DeploymentResponse)
async def deploy_kaggle(body: KaggleDeploymentRequest, request: Request, user: CurrentUser, pool: PoolDep,
                        bus: BusDep, settings: SettingsDep, broker: BrokerDep) -> DeploymentResponse:
    """Train in a private Kaggle script kernel (free, within Kaggle's weekly GPU hours). Store your Kaggle username
    and key, or an API token, first (PUT /api/secrets/kaggle). Kaggle's limits are checked before anything is
    pushed: the session limit, the weekly GPU hours, and, with ``enable_internet`` false, a base model that must
    come from ``model_sources`` or ``dataset_sources``. Without internet the job's files travel as a private Kaggle
    dataset and its metrics arrive from the kernel's output when it ends. A base model in an attached source
    (``/kaggle/input/<source>/...``) is on Kaggle's machine only: it is neither estimated nor preflighted here."""
    if body.enable_internet:
        require_reachable_urls(settings, "kaggle")
    chosen = await chosen_configuration(pool, user, body)
    await require_credentials(pool, user, "kaggle")
    options = body.provider_options()
    options["session_timeout_s"] = await check_kaggle_limits(settings, pool, broker, user, body, chosen.config)
    if body.preflight and not model_attached(body, chosen.config):
        await _preflight(request, settings, pool, user, chosen.config)
    return await _deploy("kaggle", body, chosen, user, pool, bus, settings, options, attached(body))


@router.post("/hf-spaces", status_code=202, response_model=DeploymentResponse)
async def deploy_hf_spaces(body: HFSpacesDeploymentRequest, request: Request, user: CurrentUser, pool: PoolDep,
                           bus: BusDep, settings: SettingsDep, broker: BrokerDep) -> DeploymentResponse:
    """Train in a private Docker Space on Hugging Face hardware (``gpu_tier``), billed per minute while it runs.
    Store a write token first (PUT /api/secrets/huggingface): it is checked, and so is your right to write to the
    Space's owner, before anything is created. The Space is paused at the end (billing stops only then) and
    deleted with ``delete_on_finish``; ``push_to_hub`` also pushes the adapter to a model repo. Preflight as for
    RunPod."""
    require_reachable_urls(settings, "hfspaces")
    chosen = await chosen_configuration(pool, user, body)
    await require_credentials(pool, user, "hfspaces")
    if body.preflight:
        await _preflight(request, settings, pool, user, chosen.config)
    return await _deploy("hfspaces", body, chosen, user, pool, bus, settings, body.provider_options())


@router.get("/{provider}", response_model=JobPublic)
async def deployment_status(provider: Provider, user: CurrentUser, pool: PoolDep, settings: SettingsDep,
                            pod_id: str = Query(..., description="The job id the deploy answered with, or the "
                                                                  "provider's own id of the workload.")) -> JobPublic:
    """The specification's deployment status: the job's unified status, found by its id or its pod's."""
    job_id = await views.job_for_resource(pool, user, SERVICE_NAMES.get(provider, provider), pod_id)
    if job_id is None:
        raise NotFound(f"no {provider} deployment {pod_id!r}")
    return await job_public(pool, settings, user, job_id)
