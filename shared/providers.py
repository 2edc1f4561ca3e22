"""One compute interface for every provider, local included. Each implements these few methods; everything
else (bundles, polling, timers, restarts, reconciliation, reporting) lives once in ``services.cloud.runner``.

Contracts, as each method's docstring states them, are what the shared runner relies on.
"""

from __future__ import annotations

import abc
import base64
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from shared.catalogue import Offer
from shared.events import WorkloadPhase
from shared.sealing import seal, unseal

Credentials = TypeVar("Credentials")

#: Every resource TuneFleet creates is named with this prefix, the installation, the job id and the attempt, so
#: that ``find`` and ``list_own`` can find it again and reconciliation can tell whose it is: two installations
#: on one cloud account leave each other's resources alone.
NAME_PREFIX = "tunefleet"


#: The provider option that holds a workload's secret environment values, sealed for the provider services.
SEALED_ENVIRONMENT = "sealed_environment"


def seal_environment(settings, values: dict[str, str]) -> str:
    """Secret environment values as the gateway stores and publishes them: sealed with the providers' public key."""
    if not settings.secrets_public_key:
        raise RuntimeError("TUNEFLEET_SECRETS_PUBLIC_KEY is not set for the gateway")
    return base64.b64encode(seal(settings.secrets_public_key, values)).decode()


def unseal_environment(settings, options: dict) -> dict[str, str]:
    """The secret environment values of a job's options, opened by a provider service."""
    sealed = options.get(SEALED_ENVIRONMENT)
    if not sealed:
        return {}
    if settings.secrets_private_key is None:
        raise RuntimeError("TUNEFLEET_SECRETS_PRIVATE_KEY is not set for this provider service")
    return unseal(settings.secrets_private_key.get_secret_value(), base64.b64decode(sealed))


def installation_id(secret_key: str) -> str:
    """Eight hex digits that tell this installation's resources from another's, derived from its secret key:
    every service of one installation has it, nothing more to configure, and it reveals nothing of the key."""
    return hashlib.sha256(f"tunefleet-installation:{secret_key}".encode()).hexdigest()[:8]


def resource_name(installation: str, job_id: str, attempt: int) -> str:
    return f"{NAME_PREFIX}-{installation}-{job_id}-{attempt}"


def parse_resource_name(name: str, installation: str) -> tuple[str, int] | None:
    """(job id, attempt) of a resource of ``installation``; None for any other name."""
    prefix = f"{NAME_PREFIX}-{installation}-"
    if not name.startswith(prefix):
        return None
    job_id, _, attempt = name[len(prefix):].rpartition("-")
    return (job_id, int(attempt)) if job_id and attempt.isdigit() else None


@dataclass(frozen=True)
class WorkloadRequest:
    """One attempt of a job, as the runner hands it to a provider.

    ``bundle_dir`` holds the job's files (``spec.json``, the data and, for remote workloads, the bootstrap and
    the trainer wheel); ``env`` is data for the workload (signed URLs), never shell text; ``artifacts_dir`` is
    where the workload's reports land (``result.json``, ``log-tail.txt``, ``progress.json`` and the output):
    pushed there by the workload through signed URLs, brought there by ``collect``, or written there directly by
    a local trainer. Each provider knows the fixed command that starts its workload from the bundle.
    """

    job_id: str
    attempt: int
    installation: str
    env: dict[str, str]
    bundle_dir: Path
    artifacts_dir: Path
    options: dict[str, Any] = field(default_factory=dict)
    user_id: str = ""

    @property
    def bundle_archive(self) -> Path:
        """The bundle as the tar.gz a machine fetches, beside ``bundle_dir`` (remote workloads only)."""
        return self.bundle_dir.with_name(self.bundle_dir.name + ".tar.gz")

    @property
    def name(self) -> str:
        return resource_name(self.installation, self.job_id, self.attempt)


@dataclass(frozen=True)
class Provisioned:
    resource_id: str
    cost_per_hour: float


@dataclass(frozen=True)
class ResourceStatus:
    """What the provider says of a resource, mapped onto TuneFleet's phases by the provider, in one place.

    ``phase`` RUNNING means the machine is up and runs (or can be given, see ``Compute.start``) the workload;
    PROVISIONING that it is not up yet or not any more (a container restarting, a host in trouble); FAILED that
    the provider reports it broken; None that it does not exist. ``uptime_s`` is the container's uptime where the
    provider reports one: the runner counts restarts from it.
    """

    phase: WorkloadPhase | None
    detail: str = ""
    cost_per_hour: float | None = None
    uptime_s: float | None = None
    #: The workload's run is over by itself (a kernel that completed or errored): the runner collects once more
    #: and finishes from ``result.json``, or fails with ``detail`` when there is none.
    finished: bool = False


@dataclass(frozen=True)
class OwnResource:
    resource_id: str
    job_id: str
    attempt: int


class Compute(abc.ABC, Generic[Credentials]):
    """A place that runs a workload. Blocking SDK calls go through ``asyncio.to_thread``.

    Errors: ``shared.errors.ProviderAuthFailed`` for refused credentials, ``ProviderTransient`` for what is
    worth retrying later (the implementation retries reads with back-off first, never a create), ``NoCapacity``,
    or ``ProviderError``. Nothing else escapes a method: SDK and transport errors are mapped.
    """

    name: str
    #: The workload runs on another machine: it gets the remote bundle (the trainer as a wheel and the
    #: bootstrap) and signed URLs, and checkpoints travel through the gateway. False for this machine.
    remote: bool = True
    #: The workload sends its reports and output through signed URLs; False: ``collect`` fetches them.
    pushes_reports: bool = True
    #: Resources cost money and may outlive TuneFleet's records, so reconciliation lists and ends orphans.
    reconciles: bool = True
    #: Acting on the provider needs the user's stored credentials (``PUT /api/secrets/<credentials_name>``).
    needs_credentials: bool = True
    #: The name the user's credentials are stored under; the provider's name unless set.
    credentials_name: str | None = None

    def pushes(self, options: dict[str, Any]) -> bool:
        """Whether the workload of these options sends its reports through signed URLs itself; when not, the
        runner calls ``collect``."""
        return self.pushes_reports

    def offline(self, options: dict[str, Any]) -> bool:
        """Whether the workload of these options cannot reach TuneFleet at all: its spec then has no ingest URL,
        token or checkpoint upload, the trainer spools every batch into its output, and the runner replays the
        spool once the output is here."""
        return False

    @property
    def installation(self) -> str:
        """This installation's id (``installation_id``), for the names of the resources it owns."""
        return installation_id(self.settings.require_secret_key())

    async def catalogue(self, credentials: Credentials) -> list[Offer]:
        """What the provider offers this account now, with prices (and capacity where it says), from its API.
        The default offers nothing."""
        return []

    async def validate(self, request: WorkloadRequest, credentials: Credentials) -> None:
        """Check the request against the provider (GPU type exists, …) before anything is created.
        Raise ProviderError naming the field. The default accepts everything."""

    @abc.abstractmethod
    async def provision(self, request: WorkloadRequest, credentials: Credentials) -> Provisioned:
        """Create the resource, named ``request.name``, in ONE create call, and return as soon as the provider
        has accepted it (do not wait for it to boot). Never retry the create itself: when its answer may have
        been lost (a time-out, a 5xx) raise ProviderTransient; the runner looks the name up with ``find`` before
        it creates again, so that one attempt never leaves two machines."""

    @abc.abstractmethod
    async def find(self, name: str, credentials: Credentials) -> Provisioned | None:
        """The live resource of this account called ``name``, or None. Resources being deleted do not count."""

    @abc.abstractmethod
    async def status(self, resource_id: str, credentials: Credentials) -> ResourceStatus:
        """Where the resource is now, read without side effects. A resource that does not exist gives
        ``phase=None``; never raise for it."""

    async def start(self, resource_id: str, request: WorkloadRequest, credentials: Credentials) -> None:
        """Start the workload on a resource that ``status`` reports RUNNING, for providers whose machines do not
        start it themselves (Lambda, over SSH). Idempotent. Raise ProviderTransient while the machine cannot be
        reached yet: the runner tries again at later polls until the provisioning deadline. The default does
        nothing: the resource was created with its start command."""

    async def collect(self, resource_id: str, request: WorkloadRequest, credentials: Credentials) -> None:
        """Bring the workload's reports into ``request.artifacts_dir`` (log tail, progress, and once it has
        ended its output with ``result.json`` written last). The default does nothing: the workload sends
        them itself."""

    @abc.abstractmethod
    async def terminate(self, resource_id: str, credentials: Credentials) -> None:
        """Delete the resource so that it stops costing money. Idempotent: a resource that does not exist
        returns silently. Returns fast; it does not wait for the resource to be gone."""

    @abc.abstractmethod
    async def list_own(self, credentials: Credentials) -> list[OwnResource]:
        """Every live resource of this account named by ``resource_name``, for reconciliation."""

    async def deliver(self, request: WorkloadRequest, credentials: Credentials, result: Any) -> str | None:
        """The workload succeeded and its output is in ``request.artifacts_dir``: publish it where the options ask
        (a Hub model repo), before the resource is terminated. Returns a note for the job, or raises ProviderError
        (the job still completes, and says why the push failed). The default does nothing."""
        return None

    async def tidy(self, credentials: Credentials, live_names: set[str]) -> None:
        """Remove what the account keeps for workloads that are over (Lambda's SSH keys); ``live_names`` are the
        resource names of live workloads. Called by reconciliation. The default does nothing."""

    async def close(self) -> None:
        """The provider service is stopping. The default does nothing."""
