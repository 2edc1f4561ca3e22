"""``GET /api/gpus`` through the stack: RunPod's and Lambda's offers as their real clients read them from the
emulated APIs with the user's own credentials, beside the documented tables, cheapest first."""

from __future__ import annotations

import httpx
import pytest

from services.sandbox.lambda_cloud import INSTANCE_TYPES
from services.sandbox.runpod import GPU_TYPES

from .conftest import LAMBDA_KEY, RUNPOD_KEY

pytestmark = pytest.mark.e2e


def test_the_catalogue_lists_every_providers_offers_with_prices(stack, alice, lambda_cloud):
    assert alice.put("/api/secrets/runpod", json={"api_key": RUNPOD_KEY}).status_code == 204
    assert alice.put("/api/secrets/lambda", json={"api_key": LAMBDA_KEY}).status_code == 204
    r = alice.get("/api/gpus")
    assert r.status_code == 200, r.text
    answer = r.json()
    by = {(o["provider"], o["gpu_type"]): o for o in answer["offers"]}
    for gpu, (display, memory, price) in GPU_TYPES.items():
        offer = by[("runpod", gpu)]
        assert offer["usd_per_hour"] == price and offer["vram_gb"] == memory and offer["description"] == display
        assert offer["capacity"] is True and "RunPod API" in offer["source"]
    for name, kind in INSTANCE_TYPES.items():
        offer = by[("lambda", name)]
        assert offer["usd_per_hour"] == kind["price_cents_per_hour"] / 100 and offer["gpu_count"] == kind["gpus"]
        assert offer["regions"] and offer["capacity"] is True
    assert by[("lambda", "gpu_1x_a10")]["vram_gb"] == 24
    assert by[("hfspaces", "a10g-small")]["usd_per_hour"] == 1.00 and "huggingface.co" in \
        by[("hfspaces", "a10g-small")]["source"]
    assert by[("kaggle", "NvidiaTeslaT4")]["usd_per_hour"] == 0 and by[("kaggle", "NvidiaTeslaT4")]["gpu_count"] == 2
    prices = [o["usd_per_hour"] for o in answer["offers"]]
    assert prices == sorted(prices)
    providers = {p["provider"]: p for p in answer["providers"]}
    assert providers["runpod"]["fetched_at"] and providers["runpod"]["error"] is None
    assert not providers["lambda"]["stale"]

    only = alice.get("/api/gpus", params={"provider": "lambda"}).json()
    assert {o["provider"] for o in only["offers"]} == {"lambda"}


#: Carol's own Lambda account: what she reads (capacity while there is none) is kept for her account alone, not
#: for the account the other tests deploy with.
CAROL_LAMBDA_KEY = "lambda-e2e-key-carol-0123456789"


def test_lambda_without_capacity_is_left_out_of_the_available_offers(stack, lambda_cloud):
    key = stack.cli("keys", "create", "--user", "carol").strip()
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as carol:
        r = carol.get("/api/gpus").json()  # carol stored no cloud credentials
        providers = {p["provider"]: p for p in r["providers"]}
        assert "PUT /api/secrets/runpod" in providers["runpod"]["error"]
        assert {o["provider"] for o in r["offers"]} == {"hfspaces", "kaggle"}
        assert carol.put("/api/secrets/lambda", json={"api_key": CAROL_LAMBDA_KEY}).status_code == 204
        lambda_cloud.api_keys.add(CAROL_LAMBDA_KEY)
        lambda_cloud.faults.no_capacity = True
        try:
            r = carol.get("/api/gpus", params={"provider": "lambda"}).json()
            assert r["offers"] and all(o["capacity"] is False and o["regions"] == [] for o in r["offers"])
            assert carol.get("/api/gpus", params={"provider": "lambda", "available": True}).json()["offers"] == []
        finally:
            lambda_cloud.faults.no_capacity = False
            lambda_cloud.api_keys.discard(CAROL_LAMBDA_KEY)
