from __future__ import annotations

from fastapi import APIRouter, Query

from .. import repository
from ..catalogue import catalogues
from ..deps import BrokerDep, CurrentUser, PoolDep
from ..schemas import GpuCatalogue

router = APIRouter(prefix="/api/gpus", tags=["gpus"])


@router.get("", response_model=GpuCatalogue)
async def list_gpus(user: CurrentUser, pool: PoolDep, broker: BrokerDep,
                    provider: str | None = Query(None, description="Only this provider's offers."),
                    available: bool = Query(False, description="Only offers with capacity now (or not saying).")
                    ) -> GpuCatalogue:
    """What each provider offers you, cheapest first: GPU or instance type, GPUs, memory, $/h, capacity and regions
    where known. RunPod and Lambda are asked through their APIs with your stored credentials (each answer reused
    for two minutes; when an API does not answer, its last answer, marked stale); Hugging Face Spaces and Kaggle
    come from their documented tables, with the source named."""
    stored = {s["provider"] for s in await repository.list_secrets(pool, user)}
    found = await catalogues(broker, user, stored, only=provider)
    offers = [o for c in found for o in c.offers if not available or o.capacity is not False]
    offers.sort(key=lambda o: (o.usd_per_hour is None, o.usd_per_hour or 0.0, o.provider, o.gpu_type))
    return GpuCatalogue(offers=offers, providers=[c.model_copy(update={"offers": []}) for c in found])
