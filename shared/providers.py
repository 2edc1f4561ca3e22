"""One compute interface for every cloud. Each provider implements these few methods; the rest
(bundles, polling, reconciliation, reporting) is shared by the provider services.

Contracts, as each method's docstring states them, are what the shared runner relies on.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from shared.events import WorkloadPhase

Credentials = TypeVar("Credentials")

#: Every resource TuneFleet creates is named with this prefix, the job id and the attempt, so that
#: list_own can find it again and reconciliation can tell whose it is.
NAME_PREFIX = "tunefleet"


def resource_name(job_id: str, attempt: int) -> str:
    return f"{NAME_PREFIX}-{job_id}-{attempt}"


def parse_resource_name(name: str) -> tuple[str, int] | None:
    prefix = f"{NAME_PREFIX}-"
    if not name.startswith(prefix):
        return None
    job_id, _, attempt = name[len(prefix):].rpartition("-")
    return (job_id, int(attempt)) if job_id and attempt.isdigit() else None


@dataclass(frozen=True)
class WorkloadRequest:
    """What to run: a command (argv, never shell text) with environment data, on the resources asked for."""

    job_id: str
    attempt: int
    command: list[str]
    env: dict[str, str]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return resource_name(self.job_id, self.attempt)


@dataclass(frozen=True)
class Provisioned:
    resource_id: str
    cost_per_hour: float


@dataclass(frozen=True)
class ResourceStatus:
    """What the provider says of a resource, mapped onto TuneFleet's phases by the provider, in one place."""

    phase: WorkloadPhase | None  # None: the resource does not exist (any more)
    detail: str = ""
    cost_per_hour: float | None = None


@dataclass(frozen=True)
class OwnResource:
    resource_id: str
    job_id: str
    attempt: int


class Compute(abc.ABC, Generic[Credentials]):
    """A cloud that runs a workload. Blocking SDK calls go through ``asyncio.to_thread``.

    Errors: ``shared.errors.ProviderAuthFailed`` for refused credentials, ``ProviderTransient`` for what is
    worth retrying (the implementation retries with back-off first), ``NoCapacity``, or ``ProviderError``.
    """

    name: str

    async def validate(self, request: WorkloadRequest, credentials: Credentials) -> None:
        """Check the request against the provider (GPU type exists, …) before anything is created.
        Raise ProviderError naming the field. The default accepts everything."""

    @abc.abstractmethod
    async def provision(self, request: WorkloadRequest, credentials: Credentials) -> Provisioned:
        """Create the resource and start ``request.command`` on it once it is up; return as soon as the
        provider has accepted it (do not wait for it to boot). Name it ``request.name``."""

    @abc.abstractmethod
    async def status(self, resource_id: str, credentials: Credentials) -> ResourceStatus:
        """Where the resource is now. A resource that does not exist gives ``phase=None``; never raise for it."""

    async def logs(self, resource_id: str, credentials: Credentials, *, tail_bytes: int = 4000) -> str | None:
        """The last bytes of the workload's output, or None where the provider offers no logs."""
        return None

    @abc.abstractmethod
    async def terminate(self, resource_id: str, credentials: Credentials) -> None:
        """Delete the resource so that it stops costing money. Idempotent: a resource that does not exist
        returns silently. Returns fast; it does not wait for the resource to be gone."""

    @abc.abstractmethod
    async def list_own(self, credentials: Credentials) -> list[OwnResource]:
        """Every resource of this account named by ``resource_name``, for reconciliation."""
