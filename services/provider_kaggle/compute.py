"""Kaggle kernels behind the shared compute interface: a private script kernel pushed with the real client.

One attempt is a private dataset (the job's data, see ``.kernel``) and a kernel that attaches it, both named by
the attempt's slug (``.kernel.slug_for``); the resource id is ``owner/slug``. The kernel's status is mapped onto
TuneFleet's phases in one place (``kernel_phase``); a session that completed or errored is ``finished``, and
``collect`` then brings its log (``log-tail.txt``) and, when the kernel did not push them itself, its output
(listed page by page, each file fetched with a plain GET, ``result.json`` last).

Stop: Kaggle's API has no cancel that TuneFleet can use (``CancelKernelSession`` needs a session id that no
response carries), so ``terminate`` deletes the kernel, which ends its running session soonest. Job datasets of
ended workloads are deleted by ``tidy``. Kaggle is free within a weekly GPU quota: cost is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath

import httpx

from services.cloud.bundles import LOG_TAIL, RESULT, add_bundle_env, bundle_url, write_atomically
from shared.catalogue import Offer, documented
from shared.credentials import KaggleCredentials
from shared.errors import ProviderError, ProviderTransient
from shared.events import WorkloadPhase
from shared.providers import Compute, OwnResource, Provisioned, ResourceStatus, WorkloadRequest
from shared.settings import Settings

from .api_client import KaggleClient, NotFound
from .kernel import dataset_title, parse_slug, slug_of_name, write_dataset, write_kernel
from .wheelhouse import wheelhouse

LOG_TAIL_BYTES = 16_000
#: Kaggle's session statuses (compared by the enum's name) → (phase, finished). An absent status is QUEUED.
PHASES = {
    "QUEUED": (WorkloadPhase.PROVISIONING, False),
    "NEW_SCRIPT": (WorkloadPhase.PROVISIONING, False),
    "RUNNING": (WorkloadPhase.RUNNING, False),
    "COMPLETE": (WorkloadPhase.RUNNING, True),
    "ERROR": (WorkloadPhase.FAILED, True),
    "CANCEL_REQUESTED": (None, False),
    "CANCEL_ACKNOWLEDGED": (None, False),
}
#: What an internet-on kernel's dataset holds: the bundle's signed URL and where to get Python; the rest of the
#: workload's environment travels in the bundle (``_online_env``).
DATASET_ENV_KEYS = ("TUNEFLEET_BUNDLE_URL", "TUNEFLEET_PYTHON_URL", "TUNEFLEET_PYTHON_SHA256")
#: How long a new dataset may take to be processed before the push is tried again.
DATASET_READY_S = 300.0
#: How long past the session limit the bundle URL lives: a kernel may queue before it runs.
BUNDLE_URL_QUEUE_S = 2 * 3600.0


def kernel_phase(status: dict | None) -> ResourceStatus:
    """Kaggle's kernel session status onto TuneFleet's phases, in one place."""
    if status is None:
        return ResourceStatus(phase=None, detail="the kernel does not exist")
    name = status.get("status") or "QUEUED"
    phase, finished = PHASES.get(name, (WorkloadPhase.PROVISIONING, False))
    failure = status.get("failure_message") or ""
    if name == "ERROR":
        return ResourceStatus(phase, f"the Kaggle kernel failed: {failure or 'no reason given'}", 0.0,
                              finished=True)
    if phase is None:
        return ResourceStatus(None, f"the kernel's session was cancelled ({name.lower()})", 0.0)
    detail = {"QUEUED": "the kernel is queued on Kaggle", "NEW_SCRIPT": "the kernel is queued on Kaggle",
              "RUNNING": "running", "COMPLETE": "the kernel completed"}.get(name, f"kernel is {name.lower()}")
    return ResourceStatus(phase, detail, 0.0, finished=finished)


class KaggleCompute(Compute[KaggleCredentials]):
    name = "kaggle"
    credentials_name = "kaggle"

    def __init__(self, settings: Settings):
        self.settings = settings
        self._ended: set[str] = set()

    def client(self, credentials: KaggleCredentials) -> KaggleClient:
        return KaggleClient(credentials)

    def pushes(self, options: dict) -> bool:
        return not self.offline(options)

    def offline(self, options: dict) -> bool:
        return not bool(options.get("enable_internet", True))

    async def _owner(self, client: KaggleClient) -> str:
        return client.username or await client.call("whoami")

    async def catalogue(self, credentials: KaggleCredentials) -> list[Offer]:
        return next(c.offers for c in documented() if c.provider == "kaggle")

    async def validate(self, request: WorkloadRequest, credentials: KaggleCredentials) -> None:
        title = request.options.get("notebook_title") or ""
        if len(title) < 5:
            raise ProviderError("notebook_title must have at least 5 characters", field="notebook_title")
        await self.client(credentials).call("whoami")

    async def provision(self, request: WorkloadRequest, credentials: KaggleCredentials) -> Provisioned:
        client, opts = self.client(credentials), request.options
        owner = await self._owner(client)
        slug = slug_of_name(request.name, self.installation)
        with tempfile.TemporaryDirectory(prefix="tunefleet-kaggle-push-") as scratch:
            offline = self.offline(opts)
            env = None if offline else await asyncio.to_thread(self._online_env, request)
            house = None
            if offline:
                manifest = json.loads((request.bundle_dir / "manifest.json").read_text())
                house = await asyncio.to_thread(wheelhouse, self.settings.home / "cache", manifest["requirements"])
            folder = await asyncio.to_thread(
                write_dataset, Path(scratch) / "dataset", owner=owner, slug=slug,
                title=dataset_title(opts.get("notebook_title") or "TuneFleet job"), env=env,
                bundle_dir=request.bundle_dir, wheelhouse=house)
            try:
                await client.call("dataset_status", slug=slug)
                exists = True
            except NotFound:
                exists = False
            if not exists:  # a dataset left by a create whose kernel push was lost is reused: same content
                made = await client.call("create_dataset", retry=False, folder=str(folder))
                if made["error"] and "already in use" not in made["error"]:
                    raise ProviderError(f"Kaggle refused the job's dataset: {made['error']}")
            await self._dataset_ready(client, slug)
            kernel = write_kernel(Path(scratch) / "kernel", owner=owner, slug=slug, options=opts,
                                  dataset_ref=f"{owner}/{slug}")
            timeout = opts.get("session_timeout_s")
            pushed = await client.call("push_kernel", retry=False, folder=str(kernel),
                                       timeout=str(int(timeout)) if timeout else None)
        if pushed["error"]:
            error = pushed["error"]
            if "quota" in error.lower():
                raise ProviderError(f"Kaggle refused the kernel: the account's weekly GPU quota is used up ({error}); "
                                    "wait for it to reset, or deploy with enable_gpu false")
            raise ProviderError(f"Kaggle refused the kernel: {error}")
        if f"{owner}/{slug}" not in pushed["ref"]:
            raise ProviderError(f"Kaggle saved the kernel as {pushed['ref']!r}, not {owner}/{slug}")
        if pushed["invalid_sources"]:
            with contextlib.suppress(ProviderError):
                await client.call("delete_kernel", slug=slug)
            raise ProviderError(f"Kaggle could not attach {pushed['invalid_sources']}: check dataset_sources and "
                                "model_sources (they must exist and be visible to this account)",
                                field="dataset_sources")
        return Provisioned(resource_id=f"{owner}/{slug}", cost_per_hour=0.0)

    @staticmethod
    async def _dataset_ready(client: KaggleClient, slug: str) -> None:
        """Kaggle processes a new dataset after its create answers; a kernel pushed before it is READY cannot
        attach it. A dataset still processing at the deadline is a transient failure: the next try reuses it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DATASET_READY_S
        while (status := await client.call("dataset_status", slug=slug)) != "READY":
            if status == "FAILED":
                raise ProviderError("Kaggle could not process the job's dataset (status FAILED)")
            if loop.time() > deadline:
                raise ProviderTransient(f"the job's Kaggle dataset is still processing ({status})")
            await asyncio.sleep(2.0)

    def _online_env(self, request: WorkloadRequest) -> dict[str, str]:
        """What an internet-on kernel's dataset holds: a bundle URL that lives for the session (and its queue), and
        where to download Python. The report URLs and any secret values go into the bundle, which only that URL
        fetches, so nothing pushed to Kaggle outlives the session or opens more than the one bundle."""
        inside = {k: v for k, v in request.env.items()
                  if k not in DATASET_ENV_KEYS and k != "TUNEFLEET_HOLD_AFTER_EXIT"}
        add_bundle_env(self.settings, request.job_id, request.attempt, inside)
        session_s = float(request.options.get("session_timeout_s") or self.settings.kaggle_session_hours * 3600)
        env = {k: v for k, v in request.env.items() if k in DATASET_ENV_KEYS}
        env["TUNEFLEET_BUNDLE_URL"] = bundle_url(self.settings, request.job_id, request.attempt,
                                                 session_s + BUNDLE_URL_QUEUE_S)
        return env

    async def find(self, name: str, credentials: KaggleCredentials) -> Provisioned | None:
        """Read by its slug, not searched for: a search index may lag a push whose answer was lost, and a second
        push of the slug would start a second session."""
        client = self.client(credentials)
        slug = slug_of_name(name, self.installation)
        try:
            await client.call("kernel_status", slug=slug)
        except NotFound:
            return None
        return Provisioned(f"{await self._owner(client)}/{slug}", 0.0)

    async def status(self, resource_id: str, credentials: KaggleCredentials) -> ResourceStatus:
        slug = resource_id.rpartition("/")[2]
        try:
            answer = await self.client(credentials).call("kernel_status", slug=slug)
        except NotFound:
            answer = None
        status = kernel_phase(answer)
        if status.finished:
            self._ended.add(resource_id)
        return status

    async def collect(self, resource_id: str, request: WorkloadRequest, credentials: KaggleCredentials) -> None:
        """Kaggle lists a session's log and output only once it has ended: nothing to bring before."""
        if resource_id not in self._ended:
            return
        listed = await self.client(credentials).call("kernel_output", slug=resource_id.rpartition("/")[2])
        folder = request.artifacts_dir
        await asyncio.to_thread(_write_log_tail, folder, listed["log"])
        if not (folder / RESULT).exists():
            await asyncio.to_thread(_download, listed["files"], folder, int(self.settings.max_artifacts_gb * 2**30))

    async def terminate(self, resource_id: str, credentials: KaggleCredentials) -> None:
        with contextlib.suppress(NotFound):
            await self.client(credentials).call("delete_kernel", slug=resource_id.rpartition("/")[2])
        self._ended.discard(resource_id)

    async def list_own(self, credentials: KaggleCredentials) -> list[OwnResource]:
        own, installation = [], self.installation
        for kernel in await self.client(credentials).call("list_kernels", search=f"tunefleet-{installation}-"):
            parsed = parse_slug(kernel["slug"], installation)
            if parsed:
                own.append(OwnResource(kernel["ref"], *parsed))
        return own

    async def tidy(self, credentials: KaggleCredentials, live_names: set[str]) -> None:
        """Delete the job datasets of workloads that are over (they hold the job's data)."""
        client, installation = self.client(credentials), self.installation
        live = {slug_of_name(n, installation) for n in live_names}
        for dataset in await client.call("list_datasets", search=f"tunefleet-{installation}-"):
            if parse_slug(dataset["slug"], installation) and dataset["slug"] not in live:
                with contextlib.suppress(ProviderError):
                    await client.call("delete_dataset", slug=dataset["slug"])


def _write_log_tail(folder: Path, log: str) -> None:
    """The kernel's log (a JSON array of ``{stream_name, time, data}``) as text, its last ~16 KB."""
    try:
        entries = json.loads(log) if log else []
        text = "".join(str(e.get("data", "")) for e in entries if isinstance(e, dict))
    except ValueError:
        text = log
    if text:
        write_atomically(folder / LOG_TAIL, text.encode("utf-8", "replace")[-LOG_TAIL_BYTES:])


def _target(folder: Path, name: str) -> Path | None:
    """Where an output file goes: under ``output/`` on the kernel, relative to ``folder`` here; None for
    anything else, a checkpoint, or a name that would leave the folder."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or len(path.parts) < 2 or path.parts[0] != "output":
        return None
    relative = PurePosixPath(*path.parts[1:])
    if relative.parts[0] == "checkpoints" or any(p in ("", ".") for p in relative.parts):
        return None
    target = folder.joinpath(*relative.parts)
    return target if target.resolve().is_relative_to(folder.resolve()) else None


def _download(files: list[dict], folder: Path, max_bytes: int) -> None:
    """Each listed output file with a plain GET, bounded by ``max_bytes`` in all, ``result.json`` last."""
    wanted = [(f["url"], t) for f in files if (t := _target(folder, str(f.get("name") or "")))]
    wanted.sort(key=lambda item: item[1].name == RESULT and item[1].parent == folder)
    total = 0
    try:
        with httpx.Client(timeout=300.0, follow_redirects=True) as http:
            for url, target in wanted:
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".partial")
                with http.stream("GET", url) as response, open(partial, "wb") as out:
                    if response.status_code >= 400:
                        raise ProviderTransient(f"fetching the kernel output {target.name} answered "
                                                f"{response.status_code}")
                    for chunk in response.iter_bytes():
                        total += len(chunk)
                        if total > max_bytes:
                            raise ProviderError(f"the kernel's output is larger than max_artifacts_gb "
                                                f"({max_bytes / 2**30:.1f} GB)")
                        out.write(chunk)
                os.replace(partial, target)
    except httpx.HTTPError as exc:
        raise ProviderTransient(f"fetching the kernel output failed: {type(exc).__name__}") from exc
