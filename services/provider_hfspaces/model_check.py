"""The Hub model check (``shared.hub_models``), answered by the Spaces provider service: it holds the key that opens
users' stored Hugging Face tokens, which the gateway never sees."""

from __future__ import annotations

import asyncio
import logging

from services.cloud.runner import CloudRunner
from shared import subjects
from shared.credential_store import MissingCredentials
from shared.errors import ProviderError
from shared.hub_models import HubCheckRequest, check_hub_model
from shared.service import ServiceContext

log = logging.getLogger(__name__)
WORKERS = 4


def wire_model_check(ctx: ServiceContext, runner: CloudRunner) -> None:
    @ctx.broker.subscriber(subjects.HUB_MODEL_CHECK, queue="provider-hfspaces-model-check", max_workers=WORKERS)
    async def on_model_check(request: HubCheckRequest) -> dict:
        try:
            credentials = await runner.stored(request.user_id, "huggingface")
            token = credentials.token.get_secret_value()
        except MissingCredentials:
            token = None  # public repos need none
        except ProviderError as exc:
            log.warning("the Hub model check cannot open tokens: %s", exc.message)
            token = None
        timeout = ctx.settings.hub_check_timeout_s
        answer = await asyncio.to_thread(check_hub_model, request.repo, request.revision, token, timeout_s=timeout)
        return answer.model_dump(mode="json")
