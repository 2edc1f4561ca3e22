"""Turning a deploy request into a durable DeployRequested command (outbox first, then publish)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import urlsplit

import asyncpg
from pydantic import ValidationError

from shared.budget import BudgetControls
from shared.bus import Bus
from shared.config import DataFormat, TrainingConfig, method_format_problem
from shared.dataformats import DatasetError, validate_file
from shared.errors import ConfigIncompatible, Conflict, NotFound, ValidationFailed
from shared.events import DeployRequested, Placement
from shared.outbox import Outbox
from shared.settings import Settings

from . import repository
from .policy import check_configuration_policy, check_local_job, check_train_path
from .quotas import check_local_jobs

log = logging.getLogger(__name__)

RELAY_AFTER_S = 5.0
#: The gateway's outbox for other commands (stop requests).
OUTBOX = "gateway_outbox"


@dataclass(frozen=True)
class Accepted:
    """A deploy stored (and published, or left to the relay)."""

    command: DeployRequested
    created_at: datetime


@dataclass(frozen=True)
class ResolvedData:
    path: str
    format: DataFormat
    rows: int
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Saved:
    """A saved configuration as a deploy read it: its id (in one spelling) and when it last changed."""

    id: str
    updated_at: datetime


@dataclass(frozen=True)
class Chosen:
    config: TrainingConfig
    saved: Saved | None = None


async def load_configuration(pool: asyncpg.Pool, user_id: str, configuration_id: str) -> Chosen:
    try:
        canonical = str(uuid.UUID(configuration_id))
    except ValueError as exc:
        raise ValidationFailed(f"configuration_id {configuration_id!r} is not a valid id",
                               field="configuration_id") from exc
    row = await repository.configuration(pool, user_id, canonical)
    if row is None:
        raise NotFound(f"configuration {configuration_id} not found; create it with "
                       "POST /api/training/configurations", field="configuration_id")
    return Chosen(TrainingConfig.model_validate(row["config"]), Saved(canonical, row["updated_at"]))


async def configuration_for(pool: asyncpg.Pool, user_id: str, body) -> TrainingConfig:
    """The configuration a preflight body gives (see ``chosen_configuration``)."""
    return (await chosen_configuration(pool, user_id, body)).config


async def chosen_configuration(pool: asyncpg.Pool, user_id: str, body) -> Chosen:
    """The configuration a deploy or preflight body gives: inline (``config``) or saved (``configuration_id``), with
    the request's ``dataset_id`` for one that names no data."""
    if (body.configuration_id is None) == (body.config is None):
        raise ValidationFailed("give exactly one of configuration_id (a saved configuration) or config",
                               field="configuration_id")
    chosen = Chosen(body.config) if body.config else await load_configuration(pool, user_id, body.configuration_id)
    config = chosen.config
    if body.dataset_id is not None:
        if config.data.has_source:
            named = "data.dataset_id" if config.data.dataset_id else "data.train_path"
            raise ValidationFailed(f"dataset_id and the configuration's {named} both name the data; keep one",
                                   field="dataset_id")
        config = config.model_copy(update={"data": config.data.model_copy(update={"dataset_id": body.dataset_id})})
    return Chosen(config, chosen.saved)


async def resolve_data(settings: Settings, pool: asyncpg.Pool, user_id: str, config: TrainingConfig,
                       attached: tuple[str, ...] = ()) -> ResolvedData:
    """Check the configuration against what this server allows (``policy``; ``attached``: folders the workload's
    platform fills), find the data set it names and check that its method can train on it."""
    await check_configuration_policy(settings, pool, user_id, config, attached)
    if not config.data.has_source:
        raise ValidationFailed("the configuration names no data set: give dataset_id in the request, or set "
                               "data.dataset_id (upload the JSONL with POST /api/training/datasets)",
                               field="data.dataset_id")
    if config.data.dataset_id:
        row = await repository.dataset(pool, user_id, config.data.dataset_id)
        if row is None:
            raise ValidationFailed(f"data.dataset_id {config.data.dataset_id!r} is not one of your data sets; "
                                   "upload one with POST /api/training/datasets", field="data.dataset_id")
        data = ResolvedData(row["path"], DataFormat(row["format"]), row["rows"], row["stats"])
    else:
        data = await asyncio.to_thread(_check_train_path, settings, config)
    if config.data.format and config.data.format is not data.format:
        raise ConfigIncompatible(f"data.format is {config.data.format.value} but the data set is "
                                 f"{data.format.value}; drop data.format or upload matching data",
                                 field="data.format")
    problem = method_format_problem(config.training.method, data.format)
    if problem:
        raise ConfigIncompatible(problem, field="training.method")
    return data


def _check_train_path(settings: Settings, config: TrainingConfig) -> ResolvedData:
    path = check_train_path(settings, config.data.train_path or "")
    if not path.is_file():
        raise ValidationFailed(f"data.train_path {str(path)!r} is not a readable file on the gateway's "
                               "machine; upload the file instead", field="data.train_path")
    try:
        summary = validate_file(str(path), config.data.format)
    except (DatasetError, UnicodeDecodeError) as exc:
        raise ValidationFailed(f"data.train_path: {exc}", field="data.train_path") from exc
    return ResolvedData(str(path), summary.format, summary.rows, summary.stats)


#: Host names that only a private network resolves: Kubernetes' cluster DNS and the conventional internal zones.
INTERNAL_SUFFIXES = (".svc", ".cluster.local", ".internal", ".local", ".lan", ".home.arpa")


def _unreachable(url: str) -> str | None:
    """Why a remote machine could not reach ``url``, or None when it may."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return "it names this machine (localhost)"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not host:
            return "it has no host"
        if "." not in host or host.endswith(INTERNAL_SUFFIXES):
            return f"{host} is a name only this network resolves (a compose service or a cluster's internal name)"
        return None
    if address.is_loopback or address.is_unspecified or address.is_link_local:
        return f"{host} is a loopback, unspecified or link-local address"
    return None


#: The name a provider's credentials are stored under, where it is not the provider's.
CREDENTIALS_NAMES = {"hfspaces": "huggingface"}


async def require_credentials(pool: asyncpg.Pool, user_id: str, provider: str) -> None:
    """Refuse a deploy to ``provider`` (the provider service's name) before the user stored its credentials."""
    stored = CREDENTIALS_NAMES.get(provider, provider)
    if not await repository.has_secret(pool, user_id, stored):
        raise ValidationFailed(f"no {stored} credentials stored; add them with PUT /api/secrets/{stored}",
                               field="provider")


def require_reachable_urls(settings: Settings, provider: str) -> None:
    """Refuse a cloud deploy whose workload could not call back: it fetches its bundle from the gateway and
    sends metrics to ingest, from another machine. The sandbox's workloads run here, so it is exempt."""
    if settings.sandbox:
        return
    urls = [("TUNEFLEET_GATEWAY_PUBLIC_URL", settings.gateway_public_url, "sends its heartbeats and checkpoints"),
            ("TUNEFLEET_INGEST_PUBLIC_URL", settings.ingest_public_url, "sends its metrics")]
    if settings.storage_backend == "s3" and (settings.s3_public_endpoint_url or settings.s3_endpoint_url):
        # the bundle and the output go through presigned URLs of this endpoint (unset: AWS S3's own)
        urls.append(("TUNEFLEET_S3_PUBLIC_ENDPOINT_URL", settings.s3_public_endpoint_url or settings.s3_endpoint_url,
                     "fetches its bundle and sends its output"))
    for variable, value, purpose in urls:
        why = "it is not set" if not value else _unreachable(value)
        if why:
            raise ValidationFailed(
                f"a {provider} workload {purpose} at {variable}, and {why}; the operator must set {variable} to an "
                "address that machines on the internet can reach (https://... of this server)", field=variable)


async def request_deploy(settings: Settings, pool: asyncpg.Pool, bus: Bus, *, user_id: str, provider: str,
                         config: TrainingConfig, saved: Saved | None, provider_options: dict,
                         budget: BudgetControls | None = None, placement: Placement | None = None,
                         attached: tuple[str, ...] = ()) -> Accepted:
    """Store the deploy and publish it. ``placement``: the offers automatic placement chose, ``provider`` and
    ``provider_options`` being the first; ``attached``: folders the workload's platform fills."""
    data = await resolve_data(settings, pool, user_id, config, attached)
    if provider == "local":
        await check_local_job(settings, config)
    budget = budget or BudgetControls()
    cmd = DeployRequested(
        job_id=str(uuid.uuid4()), user_id=user_id, provider=provider, config_id=saved and saved.id,
        config=config, dataset_path=data.path, dataset_format=data.format, dataset_rows=data.rows,
        provider_options=provider_options, budget_limit_usd=budget.budget_limit,
        alert_threshold_pct=budget.alert_threshold, auto_stop_on_budget=budget.auto_stop_on_budget,
        max_duration_hours=budget.max_duration_hours, notify_email=budget.notify_email, placement=placement)
    async with pool.acquire() as conn, conn.transaction():
        if provider == "local":
            await check_local_jobs(conn, user_id, settings.max_local_jobs_per_user)
        await _hold_sources(conn, user_id, saved, config)
        created_at = await repository.insert_deploy(conn, cmd.job_id, user_id, provider, cmd.model_dump(mode="json"))
    try:
        await bus.publish(cmd)
    except Exception:  # the relay publishes it later; the request is accepted all the same
        log.warning("publishing deploy of job %s failed; the outbox relay will retry", cmd.job_id)
    else:
        await repository.mark_deploy_published(pool, cmd.job_id)
    return Accepted(cmd, created_at)


async def _hold_sources(conn: asyncpg.Connection, user_id: str, saved: Saved | None,
                        config: TrainingConfig) -> None:
    """Within the deploy's transaction: the configuration and data set it was made from still exist, and stay until
    it is stored (their DELETE takes the same locks, then refuses while a live job uses them)."""
    if saved is not None:
        await repository.lock_for_use(conn, "configuration", saved.id)
        row = await repository.configuration(conn, user_id, saved.id)
        if row is None:
            raise NotFound(f"configuration {saved.id} was deleted while this deploy was checked",
                           field="configuration_id")
        if row["updated_at"] != saved.updated_at:
            raise Conflict(f"configuration {saved.id} was changed while this deploy was checked; deploy again to "
                           "train on what it says now", field="configuration_id")
    if config.data.dataset_id:
        await repository.lock_for_use(conn, "dataset", config.data.dataset_id)
        if await repository.dataset(conn, user_id, config.data.dataset_id) is None:
            raise ValidationFailed(f"data.dataset_id {config.data.dataset_id!r} is not one of your data sets (it was "
                                   "deleted while this deploy was checked)", field="data.dataset_id")


#: A published deploy that the scheduler has not turned into a job after this long is published again, at most
#: ``MAX_REPUBLISH`` times: the ack of JetStream says the command was stored, the job's row says it was taken.
REPUBLISH_AFTER_S = 60.0
MAX_REPUBLISH = 5


async def relay_outbox(pool: asyncpg.Pool, bus: Bus) -> int:
    """Publish accepted deploys whose first publish failed, and again those the scheduler has not taken after
    ``REPUBLISH_AFTER_S`` (the same message id: a copy JetStream still holds is dropped, and the scheduler creates
    each job once). Returns how many were sent."""
    rows = await repository.deploys_to_relay(pool, RELAY_AFTER_S, REPUBLISH_AFTER_S, MAX_REPUBLISH)
    sent = 0
    for row in rows:
        try:
            cmd = DeployRequested.model_validate(row["message"])
        except ValidationError:
            log.error("deploy request of job %s cannot be read; it is not published", row["job_id"])
            await repository.give_up_deploy(pool, row["job_id"], MAX_REPUBLISH)
            continue
        await bus.publish(cmd)
        again = int(row["published_at"] is not None)
        await repository.mark_deploy_published(pool, row["job_id"], again)
        if again and row["republished"] + 1 == MAX_REPUBLISH:
            log.error("job %s: the scheduler has not taken its deploy after %s publishes; look for it in the dead "
                      "letters (tunefleet dead-letters list)", row["job_id"], MAX_REPUBLISH + 1)
        sent += 1
    return sent


async def run_relay(pool: asyncpg.Pool, bus: Bus, interval: float = RELAY_AFTER_S) -> None:
    """The deploy relay and the gateway's outbox (stop requests), every ``interval`` seconds."""
    outbox = Outbox(pool, OUTBOX)
    while True:
        for name, relay in (("deploy", lambda: relay_outbox(pool, bus)), ("outbox", lambda: outbox.relay(bus.publish))):
            try:
                await relay()
            except Exception as exc:
                log.warning("%s relay pass failed (%s: %s); retrying in %.0fs", name, type(exc).__name__, exc, interval)
        await asyncio.sleep(interval)
