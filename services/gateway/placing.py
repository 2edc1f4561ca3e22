"""Automatic placement: the offers a job can run on, cheapest first, and every other offer with why it was passed
over.

The order is the estimated cost of the whole run (``estimating``: hours at the offer's speed times its price), not the
hourly price alone: a GPU twice the price that trains three times faster is the cheaper place. An offer is passed
over when its provider is not one TuneFleet deploys to, the user stored no credentials for it (its offers were not
read), the job does not fit on its GPU, the provider says it has no capacity now, it has no price, or it costs more
per hour than ``max_usd_per_hour``. The scheduler tries the offers in order when a provider has no machine after all
(``services.scheduler.handlers._place_elsewhere``).
"""

from __future__ import annotations

from shared.config import TrainingConfig
from shared.disk import volume_gb
from shared.errors import ValidationFailed
from shared.events import Placement, PlacementOffer, PlacementRejection

from .schemas import EstimateCandidate

AUTO = "auto"
#: The providers a job can be placed on, and the deploy route of each.
PLACEABLE = ("runpod", "lambda")
#: The deploy routes of the providers placement leaves alone.
ROUTES = {"kaggle": "kaggle", "hfspaces": "hf-spaces"}
#: Offers kept to fall back on: each move is an attempt, and a provider out of one GPU is often out of the next.
MAX_OFFERS = 4


def default_options(config: TrainingConfig) -> dict[str, dict]:
    """Per provider, the options its deploy takes when the request gives none but the offer, as its own route makes
    them (``gpu_type`` or ``instance_type`` is the offer's)."""
    return {"runpod": {"gpu_count": config.training.gpu_count, "docker_image": None,
                       "volume_size_gb": volume_gb(config), "environment_variables": {}},
            "lambda": {"region": None}}


def offer_options(candidate: EstimateCandidate, base: dict[str, dict]) -> dict:
    named = {"runpod": "gpu_type", "lambda": "instance_type"}[candidate.provider]
    return {**base.get(candidate.provider, {}), named: candidate.gpu_type}


def place(candidates: list[EstimateCandidate], options: dict[str, dict], *, unanswered: dict[str, str],
          max_usd_per_hour: float | None = None) -> Placement:
    """The placement of a job over the estimate's candidates (fitting and cheapest first, as ``estimate_for`` sorts
    them). ``options``: per provider asked for, the deploy options beside the offer's GPU (``default_options``).
    ``unanswered``: provider → why its offers are missing (no credentials, its API failed). Raises ValidationFailed,
    listing why each offer was passed over, when none is left."""
    offers: list[PlacementOffer] = []
    rejected = [PlacementRejection(provider=provider, gpu="*", reason=why) for provider, why in unanswered.items()]
    for c in candidates:
        why = None
        if c.provider not in PLACEABLE:
            why = (f"{c.provider} needs what placement cannot choose for you (a notebook title, a Space name): "
                   f"deploy to POST /api/training/deploy/{ROUTES.get(c.provider, c.provider)}")
        elif c.provider not in options:
            why = f"not asked for (provider: {', '.join(options)})"
        elif not c.fits:
            why = c.reason or "does not fit"
        elif c.capacity is False:
            why = f"{c.provider} has no capacity for it now"
        elif c.usd_per_hour is None or c.cost_usd is None:
            why = "no price"
        elif max_usd_per_hour is not None and c.usd_per_hour > max_usd_per_hour:
            why = f"${c.usd_per_hour:.2f}/h is over max_usd_per_hour ${max_usd_per_hour:.2f}"
        elif len(offers) >= MAX_OFFERS:
            why = f"costlier than the {MAX_OFFERS} offers kept to try"
        if why is None:
            offers.append(PlacementOffer(provider=c.provider, gpu=c.gpu_type, cost_per_hour=c.usd_per_hour,
                                         provider_options=offer_options(c, options), estimated_cost=c.cost_usd))
        else:
            rejected.append(PlacementRejection(provider=c.provider, gpu=c.gpu_type, reason=why))
    if not offers:
        reasons = "; ".join(f"{r.provider} {r.gpu}: {r.reason}" for r in rejected[:12]) or "no offers were found"
        raise ValidationFailed(f"no offer can take this job ({reasons}); store credentials for another provider, "
                               "change the configuration, or raise max_usd_per_hour", field="gpu_type",
                               details={"rejected": [r.model_dump() for r in rejected]})
    return Placement(offers=offers, rejected=rejected)
