"""Hugging Face Spaces behind the shared compute interface.

A job runs in a private Docker Space named by the user (``space_name``): created in one ``create_repo`` call with
its hardware (``gpu_tier``), its secrets (the signed URLs of ``request.env`` and the user's secret environment) and
one variable, ``TUNEFLEET_RESOURCE=<request.name>``, that says which attempt it runs; then its fixed files
(``space_files``) are committed and the Hub builds and starts it. The Space's id is the user's name, not
TuneFleet's, so the table ``hfspaces_spaces`` maps each attempt's resource name to its Space, written before the
create: ``find`` and ``list_own`` read it and confirm it with the variable. A Space that exists and is not this
job's is never touched; a later attempt of the same job reuses its own Space (new secrets, restart).

Billing: the Hub bills paid hardware per minute while the container holds it. ``cost_per_hour`` is the price while
the Space is APP_STARTING or RUNNING (the container runs on the hardware from APP_STARTING on, so that minute is
billed as well) and 0.0 while it builds or is paused. The price is the live ``list_spaces_hardware`` one, else the
documented table. ``terminate`` pauses the Space (billing stops only then) and deletes it where the deploy asked.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import asyncpg

from shared.catalogue import HF_SPACES, Offer
from shared.credentials import HuggingFaceCredentials
from shared.db import create_pool
from shared.errors import ProviderError, ProviderTransient
from shared.events import WorkloadPhase
from shared.providers import (
    Compute,
    OwnResource,
    Provisioned,
    ResourceStatus,
    WorkloadRequest,
    parse_resource_name,
)
from shared.settings import Settings

from .api_client import AUTH_FIX, HubClient, endpoint, redacted
from .space_files import space_files

RESOURCE_VARIABLE = "TUNEFLEET_RESOURCE"
SPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
WRITE_ROLES = ("admin", "write")
#: The Space's stage (a raw string: SLEEPING is missing from the SDK's enum) → phase, in one place.
#: NO_APP_FILE is a Space created and not yet given its files; right after the commit the Hub may still say so, and
#: one that stays so is replaced at the provisioning deadline.
PROVISIONING_STAGES = ("NO_APP_FILE", "BUILDING", "APP_STARTING")
RUNNING_STAGES = ("RUNNING", "RUNNING_BUILDING", "RUNNING_APP_STARTING")
FAILED_STAGES = ("BUILD_ERROR", "RUNTIME_ERROR", "CONFIG_ERROR")
GONE_STAGES = ("PAUSED", "STOPPED", "SLEEPING", "DELETING")
#: Stages in which the hardware is held, and billed.
BILLED_STAGES = ("APP_STARTING", "RUNNING", "RUNNING_BUILDING", "RUNNING_APP_STARTING")
LOG_LINES = 30
PRICES_TTL_S = 600.0


def space_phase(runtime: dict | None, price: float, log_tail: str = "") -> ResourceStatus:
    """A Space's runtime onto TuneFleet's phases, in one place. Compare raw strings: the Hub sends stages the SDK's
    enum lacks (SLEEPING). A paused, stopped or sleeping Space is gone (preempted mid-run); a broken one FAILED
    with the Hub's errorMessage and the log's last lines."""
    if runtime is None:
        return ResourceStatus(phase=None, detail="the Space does not exist")
    stage = str(runtime.get("stage") or "")
    cost = price if stage in BILLED_STAGES else 0.0
    if stage in RUNNING_STAGES:
        return ResourceStatus(WorkloadPhase.RUNNING, "running", cost)
    if stage in PROVISIONING_STAGES:
        return ResourceStatus(WorkloadPhase.PROVISIONING, f"the Space is {stage.lower().replace('_', ' ')}", cost)
    if stage in FAILED_STAGES:
        said = redacted(str(runtime.get("errorMessage") or stage))
        detail = f"the Space failed: {stage}: {said}"
        if log_tail:
            detail += f"; its log ends:\n{log_tail}"
        return ResourceStatus(WorkloadPhase.FAILED, detail, 0.0)
    if stage in GONE_STAGES:
        return ResourceStatus(phase=None, detail=f"the Space is {stage.lower()}", cost_per_hour=0.0)
    return ResourceStatus(WorkloadPhase.PROVISIONING, f"the Space is {stage.lower() or 'in an unknown stage'}", cost)


def hourly(hardware: Any) -> float | None:
    """The hourly price of a live hardware entry (``unitCostUSD`` per ``unitLabel``)."""
    per = {"minute": 60.0, "hour": 1.0, "second": 3600.0}.get(str(getattr(hardware, "unit_label", "")).lower())
    cost = getattr(hardware, "unit_cost_usd", None)
    return round(float(cost) * per, 4) if per and cost is not None else None


class SpacesCompute(Compute[HuggingFaceCredentials]):
    name = "hfspaces"
    credentials_name = "huggingface"

    def __init__(self, settings: Settings, pool: asyncpg.Pool | None = None):
        self.settings = settings
        self._pool, self._own_pool = pool, pool is None
        self._prices: tuple[float, dict[str, float]] | None = None

    def client(self, credentials: HuggingFaceCredentials) -> HubClient:
        return HubClient(credentials.token.get_secret_value())

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            self._pool = await create_pool(self.settings.require_database_url(), max_size=2)
        return self._pool

    async def close(self) -> None:
        if self._own_pool and self._pool is not None:
            await self._pool.close()
            self._pool = None

    # Prices -----------------------------------------------------------------------------------------------

    async def prices(self, client: HubClient) -> dict[str, float]:
        """Flavour → $/h: the Hub's live prices (kept a while: they are the same for everyone), else the
        documented table."""
        if self._prices is not None and time.monotonic() - self._prices[0] < PRICES_TTL_S:
            return self._prices[1]
        table = {flavour: price for flavour, _, _, _, price in HF_SPACES}
        try:
            live = {hw.name: p for hw in await client.hardware() if (p := hourly(hw)) is not None}
        except ProviderError:
            return {**{"cpu-basic": 0.0}, **table}
        prices = {**table, **live}
        self._prices = (time.monotonic(), prices)
        return prices

    async def catalogue(self, credentials: HuggingFaceCredentials) -> list[Offer]:
        offers = []
        for hw in await self.client(credentials).hardware():
            accelerator, price = hw.accelerator, hourly(hw)
            if accelerator is None or price is None:
                continue
            count = int(accelerator.quantity) if str(accelerator.quantity).isdigit() else 1
            vram = re.match(r"^\s*([\d.]+)", str(accelerator.vram))
            offers.append(Offer(provider=self.name, gpu_type=hw.name, description=hw.pretty_name, gpu_count=count,
                                vram_gb=float(vram.group(1)) if vram else None, usd_per_hour=price,
                                source="Hugging Face API: GET /api/spaces/hardware"))
        return offers

    # Checks -----------------------------------------------------------------------------------------------

    async def validate(self, request: WorkloadRequest, credentials: HuggingFaceCredentials) -> None:
        """The token, its write access to the Space's owner (and the push target's), the options, and that the
        Space is not someone else's: all before anything is created."""
        opts, client = request.options, self.client(credentials)
        space_id = str(opts.get("space_name") or "")
        if not SPACE_NAME.match(space_id):
            raise ProviderError(f"space_name {space_id!r} must be 'owner/name'", field="space_name")
        if opts.get("visibility", "private") not in ("private", "public"):
            raise ProviderError("visibility must be 'private' or 'public'", field="visibility")
        me = await client.whoami()
        self._check_write(me, space_id, "space_name")
        push = opts.get("push_to_hub")
        if push:
            if not SPACE_NAME.match(str(push)):
                raise ProviderError(f"push_to_hub {push!r} must be a model repo id 'owner/name'", field="push_to_hub")
            self._check_write(me, str(push), "push_to_hub")
        tier = opts.get("gpu_tier")
        prices = await self.prices(client)
        if tier not in prices:
            raise ProviderError(f"gpu_tier {tier!r} is not a Spaces hardware flavour; choose one of "
                                f"{sorted(prices)}", field="gpu_tier")
        await self._owned_or_free(client, space_id, request)

    def _check_write(self, me: dict, repo_id: str, field: str) -> None:
        owner, user = repo_id.split("/")[0], me.get("name")
        access = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
        if access == "read":
            raise ProviderError(f"{field} {repo_id!r}: the stored Hugging Face token is read-only; create a token "
                                f"with write access and {AUTH_FIX}", field=field)
        if owner == user:
            return
        role = next((o.get("roleInOrg") for o in me.get("orgs") or [] if o.get("name") == owner), None)
        if role not in WRITE_ROLES:
            why = f"your role in {owner!r} is {role!r}" if role else f"{owner!r} is neither you ({user!r}) nor " \
                                                                     "one of your organisations"
            raise ProviderError(f"{field} {repo_id!r}: the token cannot write there ({why}); name a repo under "
                                f"{user!r} or an organisation where you have the write role", field=field)

    async def _owned_or_free(self, client: HubClient, space_id: str, request: WorkloadRequest) -> dict | None:
        """The Space's variables when it is this job's, None when it does not exist; ProviderError when it is
        anyone else's."""
        variables = await client.variables(space_id)
        if variables is None:
            return None
        parsed = parse_resource_name(variables.get(RESOURCE_VARIABLE, ""), self.installation)
        if parsed is None or parsed[0] != request.job_id:
            raise ProviderError(f"space_name {space_id!r} already exists and was not created for this job: "
                                "TuneFleet never touches a Space it did not create; name a new Space",
                                field="space_name")
        return variables

    # Lifecycle --------------------------------------------------------------------------------------------

    async def provision(self, request: WorkloadRequest, credentials: HuggingFaceCredentials) -> Provisioned:
        opts, client = request.options, self.client(credentials)
        space_id, tier = str(opts["space_name"]), str(opts.get("gpu_tier") or "cpu-basic")
        # The workload's environment (signed URLs, a judge's key) is secret; the one variable says which attempt runs.
        secrets, variables = dict(request.env), {RESOURCE_VARIABLE: request.name}
        try:
            files = space_files(self.settings.runpod_default_image)
        except ValueError as exc:
            raise ProviderError(f"TUNEFLEET_RUNPOD_DEFAULT_IMAGE: {exc}") from None
        pool, account = await self.pool(), await self._account(client)
        await pool.execute(
            """INSERT INTO hfspaces_spaces (resource_name, space_id, delete_on_finish, account) VALUES ($1, $2, $3, $4)
               ON CONFLICT (resource_name) DO UPDATE SET space_id = $2, delete_on_finish = $3, account = $4,
                                                          ended_at = NULL""",
            request.name, space_id, bool(opts.get("delete_on_finish", False)), account)
        existing = await self._owned_or_free(client, space_id, request)
        if existing is None:
            try:
                await client.create_space(space_id, private=opts.get("visibility", "private") != "public",
                                          hardware=tier, secrets=secrets, variables=variables)
            except ProviderError as exc:
                status = exc.details.get("status")
                if status == 402:
                    raise ProviderError(
                        f"Hugging Face requires a payment method for gpu_tier {tier!r}: add a payment method "
                        "at https://huggingface.co/settings/billing or choose gpu_tier 'cpu-basic'",
                        field="gpu_tier") from None
                if status == 409:  # created meanwhile (a lost answer): the runner looks it up by name
                    raise ProviderTransient(f"space_name {space_id!r} was created meanwhile; looking it up "
                                            "again") from None
                if status == 403:
                    raise ProviderError(f"space_name {space_id!r}: Hugging Face refused to create it ("
                                        f"{exc.message}); give a token with write access to its owner and "
                                        f"{AUTH_FIX}", field="space_name") from None
                raise
            await client.commit(space_id, files, f"TuneFleet: {request.name}")
        else:
            await self._reuse(client, space_id, tier, existing, secrets, variables, files, request)
        return Provisioned(resource_id=space_id, cost_per_hour=0.0)

    async def _reuse(self, client: HubClient, space_id: str, tier: str, existing: dict[str, str],
                     secrets: dict[str, str], variables: dict[str, str], files: dict, request: WorkloadRequest
                     ) -> None:
        """A later attempt of the same job in its own Space: this attempt's secrets and name, then a restart."""
        await client.pause(space_id)
        await client.put_secrets(space_id, secrets)
        for key in ("TUNEFLEET_RESUME_URL",):
            if key not in secrets:
                await client.delete_secret(space_id, key)
        for key, value in variables.items():
            if existing.get(key) != value:
                await client.put_variable(space_id, key, value)
        runtime = await client.runtime(space_id) or {}
        if (runtime.get("hardware") or {}).get("requested") != tier:
            await client.request_hardware(space_id, tier)
        await client.commit(space_id, files, f"TuneFleet: {request.name}")
        await client.restart(space_id)

    async def find(self, name: str, credentials: HuggingFaceCredentials) -> Provisioned | None:
        space_id = await (await self.pool()).fetchval(
            "SELECT space_id FROM hfspaces_spaces WHERE resource_name = $1", name)
        if space_id is None:
            return None
        client = self.client(credentials)
        variables = await client.variables(space_id)
        if variables is None or variables.get(RESOURCE_VARIABLE) != name:
            return None
        runtime = await client.runtime(space_id)
        stage = str((runtime or {}).get("stage") or "")
        if runtime is None or stage in GONE_STAGES or stage == "NO_APP_FILE":
            return None  # NO_APP_FILE: created, files not committed yet; provision completes it
        price = (await self.prices(client)).get(self._hardware(runtime), 0.0)
        return Provisioned(space_id, price if stage in BILLED_STAGES else 0.0)

    @staticmethod
    def _hardware(runtime: dict) -> str:
        hardware = runtime.get("hardware") or {}
        return str(hardware.get("current") or hardware.get("requested") or "cpu-basic")

    async def status(self, resource_id: str, credentials: HuggingFaceCredentials) -> ResourceStatus:
        client = self.client(credentials)
        runtime = await client.runtime(resource_id)
        if runtime is None:
            return space_phase(None, 0.0)
        stage = str(runtime.get("stage") or "")
        tail = ""
        if stage in FAILED_STAGES:
            try:
                lines = await client.logs(resource_id, build=stage in ("BUILD_ERROR", "CONFIG_ERROR"))
                tail = redacted("".join(lines[-LOG_LINES:]).strip())
            except ProviderError:
                tail = ""
        price = (await self.prices(client)).get(self._hardware(runtime), 0.0)
        return space_phase(runtime, price, tail)

    async def terminate(self, resource_id: str, credentials: HuggingFaceCredentials) -> None:
        """Pause (billing stops), then delete where the deploy asked. A Space that does not exist is gone."""
        client = self.client(credentials)
        if not await client.pause(resource_id):
            return
        pool = await self.pool()
        delete = await pool.fetchval(
            "SELECT delete_on_finish FROM hfspaces_spaces WHERE space_id = $1 ORDER BY created_at DESC LIMIT 1",
            resource_id)
        if delete:
            await client.delete(resource_id)
        await pool.execute("UPDATE hfspaces_spaces SET ended_at = now() WHERE space_id = $1 AND ended_at IS NULL",
                           resource_id)

    @staticmethod
    async def _account(client: HubClient) -> str:
        return str((await client.whoami()).get("name") or "")

    async def list_own(self, credentials: HuggingFaceCredentials) -> list[OwnResource]:
        """This installation's Spaces that hold hardware now, as their variable names them, among those this token's
        account created: another user's Space in a shared organisation is never paused with this token."""
        client, own = self.client(credentials), []
        rows = await (await self.pool()).fetch(
            """SELECT DISTINCT space_id FROM hfspaces_spaces
               WHERE account = $1 AND (ended_at IS NULL OR ended_at > now() - interval '1 day')""",
            await self._account(client))
        for row in rows:
            space_id = row["space_id"]
            try:
                variables = await client.variables(space_id)
                runtime = await client.runtime(space_id) if variables is not None else None
            except ProviderError as exc:
                if exc.details.get("status") in (403, 404):
                    continue
                raise
            parsed = parse_resource_name((variables or {}).get(RESOURCE_VARIABLE, ""), self.installation)
            if parsed and runtime is not None and str(runtime.get("stage")) not in GONE_STAGES:
                own.append(OwnResource(space_id, *parsed))
        return own

    # The result -------------------------------------------------------------------------------------------

    async def deliver(self, request: WorkloadRequest, credentials: HuggingFaceCredentials, result: Any) -> str | None:
        """Push the adapter folder to ``push_to_hub`` (a private model repo, created if missing). Only regular
        files inside the folder go, never a link (the folder came from the workload)."""
        target = request.options.get("push_to_hub")
        if not target:
            return None
        folder = Path(getattr(result, "adapter_path", None) or request.artifacts_dir / "adapter")
        files = await asyncio.to_thread(_regular_files, folder)
        if files is None:
            raise ProviderError(f"push_to_hub {target!r}: the job left no adapter folder to push")
        if not files:
            raise ProviderError(f"push_to_hub {target!r}: the adapter folder is empty")
        client = self.client(credentials)
        await client.ensure_model_repo(str(target))
        await client.commit(str(target), files, f"TuneFleet job {request.job_id}: adapter", repo_type="model")
        return f"adapter pushed to {endpoint()}/{target}"


def _regular_files(folder: Path) -> dict[str, Path] | None:
    """The regular files under ``folder`` by relative path, never through a link; None when it is no folder."""
    if not folder.is_dir() or folder.is_symlink():
        return None
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or any(p.is_symlink() for p in path.relative_to(folder).parents if str(p) != "."):
            continue
        if path.is_file():
            found[path.relative_to(folder).as_posix()] = path
    return found
