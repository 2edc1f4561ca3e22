"""The GPU catalogue's parts without a network: the providers' answers turned into offers, the documented tables,
and the provider service's cache (fresh, then the last answer marked stale when the API fails)."""

from __future__ import annotations

import asyncio

import pytest

from services.cloud.catalogue import CatalogueCache
from services.provider_lambda.compute import lambda_offer
from services.provider_runpod.compute import runpod_offer
from shared.catalogue import HF_SPACES, Offer, documented
from shared.errors import ProviderTransient


def test_runpod_gpu_types_become_offers_at_their_lowest_on_demand_price():
    offer = runpod_offer({"id": "NVIDIA A40", "displayName": "A40", "memoryInGb": 48, "securePrice": 0.44,
                          "communityPrice": 0.35, "lowestPrice": {"uninterruptablePrice": 0.39}})
    assert (offer.usd_per_hour, offer.vram_gb, offer.capacity) == (0.39, 48, True)
    sold_out = runpod_offer({"id": "NVIDIA H100", "securePrice": 2.99, "communityPrice": 0,
                             "lowestPrice": {"uninterruptablePrice": None}})
    assert (sold_out.usd_per_hour, sold_out.capacity) == (2.99, False)
    assert runpod_offer({"id": "unpriced", "lowestPrice": None}) is None


def test_lambda_instance_types_become_offers_with_their_regions():
    offer = lambda_offer("gpu_8x_h100_sxm5", {
        "instance_type": {"name": "gpu_8x_h100_sxm5", "description": "8x H100 (80 GB SXM5)",
                          "price_cents_per_hour": 2392, "specs": {"gpus": 8}},
        "regions_with_capacity_available": [{"name": "us-east-1", "description": "Virginia"}]})
    assert (offer.usd_per_hour, offer.gpu_count, offer.vram_gb, offer.regions) == (23.92, 8, 80.0, ["us-east-1"])
    old_api = lambda_offer("gpu_1x_a10", {"instance_type": {"description": "1x A10 (24 GB PCIe)",
                                                            "price_cents_per_hour": 75},
                                          "regions_with_capacity_available": []})
    assert (old_api.gpu_count, old_api.capacity) == (1, False)  # the count from the name, where specs lack it


def test_documented_tables_name_their_source_and_use_the_clients_names():
    from huggingface_hub import SpaceHardware

    assert {flavour for flavour, *_ in HF_SPACES} <= {h.value for h in SpaceHardware}
    for catalogue in documented():
        assert catalogue.offers and all(o.source.startswith("https://") for o in catalogue.offers)


class FakeCompute:
    def __init__(self):
        self.calls, self.fail = 0, False

    async def catalogue(self, credentials):
        self.calls += 1
        if self.fail:
            raise ProviderTransient("RunPod answered 502")
        return [Offer(provider="runpod", gpu_type=f"g{self.calls}", description="d", usd_per_hour=2.0,
                      source="api"),
                Offer(provider="runpod", gpu_type="cheap", description="d", usd_per_hour=0.5, source="api")]


class FakeRunner:
    provider = "runpod"

    def __init__(self):
        self.compute = FakeCompute()

    async def credentials(self, user_id):
        return object()


async def test_the_cache_answers_fresh_then_the_last_answer_marked_stale():
    runner = FakeRunner()
    cache = CatalogueCache(runner, fresh_for_s=0.0, deadline_s=1.0)
    first = await cache.for_user("alice")
    assert [o.gpu_type for o in first.offers] == ["cheap", "g1"] and not first.stale and first.fetched_at
    runner.compute.fail = True
    again = await cache.for_user("alice")
    assert again.stale and again.error == "RunPod answered 502" and again.offers == first.offers
    never = await cache.for_user("bob")
    assert never.offers == [] and never.error == "RunPod answered 502" and not never.stale


async def test_a_fresh_answer_is_reused_and_a_slow_api_is_not_waited_for():
    runner = FakeRunner()
    cache = CatalogueCache(runner, fresh_for_s=60.0, deadline_s=0.2)
    await asyncio.gather(cache.for_user("alice"), cache.for_user("alice"))
    assert runner.compute.calls == 1  # one API call for both

    async def hangs(credentials):
        await asyncio.sleep(30)

    runner.compute.catalogue = hangs
    slow = await CatalogueCache(runner, deadline_s=0.2).for_user("bob")
    assert slow.error.startswith("no answer in") and slow.offers == []


@pytest.mark.parametrize("provider", ["hfspaces", "kaggle"])
def test_documented_providers_are_priced(provider):
    [catalogue] = [c for c in documented() if c.provider == provider]
    assert all(o.usd_per_hour is not None and o.vram_gb for o in catalogue.offers)
