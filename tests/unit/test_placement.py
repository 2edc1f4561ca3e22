"""Automatic placement over the estimate's candidates: the cheapest whole run that fits and can be had, and every
other offer with why it was passed over."""

from __future__ import annotations

import pytest

from services.gateway.placing import MAX_OFFERS, default_options, place
from services.gateway.schemas import EstimateCandidate
from shared.config import TrainingConfig
from shared.errors import ValidationFailed

CONFIG = TrainingConfig.model_validate({"name": "t", "model": {"base_model": "m"}, "data": {"dataset_id": "d"}})


def candidate(provider: str, gpu: str, cost: float | None, *, fits: bool = True, capacity: bool | None = True,
              per_hour: float | None = 1.0) -> EstimateCandidate:
    return EstimateCandidate(provider=provider, gpu_type=gpu, description=gpu, gpu_count=1, vram_gib=24,
                             tflops_16bit=100, fits=fits, reason=None if fits else "needs 30 GiB; the GPU has 24",
                             hours=1.0, usd_per_hour=per_hour, cost_usd=cost, capacity=capacity)


def test_the_cheapest_run_that_fits_and_can_be_had_comes_first_and_every_other_offer_says_why():
    candidates = [  # as the estimate sorts them: fitting first, cheapest first
        candidate("kaggle", "NvidiaTeslaT4", 0.0, per_hour=0.0),
        candidate("runpod", "NVIDIA RTX A5000", 0.2, capacity=False),
        candidate("lambda", "gpu_1x_a10", 0.3, per_hour=0.75),
        candidate("runpod", "NVIDIA A40", 0.4, per_hour=0.44),
        candidate("runpod", "NVIDIA H100 PCIe", 1.2, per_hour=2.39),
        candidate("runpod", "NVIDIA RTX A4000", None, fits=False),
    ]
    placement = place(candidates, default_options(CONFIG), unanswered={"hfspaces": "no hfspaces credentials"},
                      max_usd_per_hour=2.0)
    assert [(o.provider, o.gpu) for o in placement.offers] == [("lambda", "gpu_1x_a10"), ("runpod", "NVIDIA A40")]
    assert placement.offers[0].provider_options == {"region": None, "instance_type": "gpu_1x_a10"}
    assert placement.offers[1].provider_options["gpu_type"] == "NVIDIA A40"
    assert placement.offers[1].provider_options["volume_size_gb"] >= 10 and placement.chosen == 0
    why = {(r.provider, r.gpu): r.reason for r in placement.rejected}
    assert why == {
        ("hfspaces", "*"): "no hfspaces credentials",
        ("kaggle", "NvidiaTeslaT4"): "kaggle needs what placement cannot choose for you (a notebook title, a Space "
                                     "name): deploy to POST /api/training/deploy/kaggle",
        ("runpod", "NVIDIA RTX A5000"): "runpod has no capacity for it now",
        ("runpod", "NVIDIA H100 PCIe"): "$2.39/h is over max_usd_per_hour $2.00",
        ("runpod", "NVIDIA RTX A4000"): "needs 30 GiB; the GPU has 24",
    }


def test_one_provider_asked_for_and_a_bounded_fallback_list():
    candidates = [candidate("runpod", f"gpu-{i}", 0.1 * i) for i in range(MAX_OFFERS + 2)]
    candidates.insert(0, candidate("lambda", "gpu_1x_a10", 0.01))
    placement = place(candidates, {"runpod": {"gpu_count": 1}}, unanswered={})
    assert [o.gpu for o in placement.offers] == [f"gpu-{i}" for i in range(MAX_OFFERS)]
    reasons = [r.reason for r in placement.rejected]
    assert reasons[0] == "not asked for (provider: runpod)"
    assert reasons[1:] == [f"costlier than the {MAX_OFFERS} offers kept to try"] * 2


def test_nothing_to_place_on_is_refused_with_every_reason():
    with pytest.raises(ValidationFailed) as refused:
        place([candidate("runpod", "NVIDIA RTX A4000", None, fits=False)], default_options(CONFIG),
              unanswered={"lambda": "no lambda credentials stored; PUT /api/secrets/lambda"})
    assert refused.value.field == "gpu_type"
    assert "lambda *: no lambda credentials stored" in refused.value.message
    assert "runpod NVIDIA RTX A4000: needs 30 GiB" in refused.value.message
    assert len(refused.value.details["rejected"]) == 2
