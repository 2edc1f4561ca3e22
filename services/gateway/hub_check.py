"""Saving a configuration checks a hub base model (``shared.hub_models``) through the service that can open the user's
Hugging Face token; a refusal is a 422 naming the field, an unreachable Hub (or no service to ask) a note that the
check was skipped."""

from __future__ import annotations

import orjson

from shared import subjects
from shared.config import TrainingConfig
from shared.errors import ValidationFailed
from shared.hub_models import HubModelCheck, is_hub_id
from shared.settings import Settings


async def check_base_model(broker, settings: Settings, user_id: str, config: TrainingConfig) -> HubModelCheck | None:
    """None for a local model folder; raises ValidationFailed for a model the Hub refuses."""
    repo = config.model.base_model
    if not is_hub_id(repo):
        return None
    try:
        reply = await broker.request({"user_id": user_id, "repo": repo, "revision": config.model.revision},
                                     subjects.HUB_MODEL_CHECK, timeout=settings.hub_check_timeout_s * 3 + 5)
        answer = HubModelCheck.model_validate(orjson.loads(reply.body))
    except Exception as exc:  # no responder, a time-out, NATS away: the save goes on, and says so
        return HubModelCheck(status="skipped", repo=repo, reason=f"the Hub check did not answer "
                                                                  f"({type(exc).__name__}): the base model was not "
                                                                  "checked")
    if answer.status == "refused":
        raise ValidationFailed(answer.reason or f"model.base_model {repo!r} was refused by the Hub",
                               field=answer.field or "model.base_model", details={"hub_check": answer.model_dump()})
    return answer
