"""``GET /api/gpus``: every provider's offers for this user, asked of the provider services (which alone open the
user's credentials) in parallel, beside the documented tables of the providers that have no price API."""

from __future__ import annotations

import asyncio

import orjson
from faststream.nats import NatsBroker

from shared import subjects
from shared.catalogue import Catalogue, documented

#: Cloud providers that answer ``subjects.catalogue``.
CLOUDS = ("runpod", "lambda")
#: A little over the provider services' own deadline for their API.
ASK_TIMEOUT_S = 20.0


async def ask(broker: NatsBroker, provider: str, user_id: str) -> Catalogue:
    try:
        reply = await broker.request({"user_id": user_id}, subjects.catalogue(provider), timeout=ASK_TIMEOUT_S)
        return Catalogue.model_validate(orjson.loads(reply.body))
    except Exception as exc:  # no responder, a time-out, NATS away: say so for this provider, answer the rest
        return Catalogue(provider=provider, error=f"the {provider} service did not answer ({type(exc).__name__})")


async def catalogues(broker: NatsBroker, user_id: str, with_credentials: set[str],
                     only: str | None = None) -> list[Catalogue]:
    """Every provider's catalogue for the user (``only``'s alone when given: the others are not asked)."""

    async def one(provider: str) -> Catalogue:
        if provider not in with_credentials:
            return Catalogue(provider=provider, error=f"no {provider} credentials stored; its offers and prices "
                                                      f"are read with them: PUT /api/secrets/{provider}")
        return await ask(broker, provider, user_id)

    clouds = [p for p in CLOUDS if only in (None, p)]
    return [*await asyncio.gather(*(one(p) for p in clouds)), *(c for c in documented() if only in (None, c.provider))]
