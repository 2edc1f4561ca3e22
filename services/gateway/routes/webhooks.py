"""A user's webhooks: made with a signing secret shown once, tested, and their delivery log read."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.notifier import store, urls
from services.notifier.endpoint_secrets import new_secret, seal_secret
from services.notifier.payloads import ALL, EVENT_TYPES, webhook_test_notice
from services.notifier.retry import PENDING
from shared.errors import Conflict, NotFound, QuotaExceeded, ServiceUnavailable, ValidationFailed
from shared.netpolicy import BlockedAddress
from shared.settings import Settings

from ..deps import CurrentUser, PoolDep, SettingsDep

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])

#: Webhooks one user may have.
MAX_WEBHOOKS_PER_USER = 20


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="Where events are POSTed: https:// (or http://), at a public address.",
                     examples=["https://example.com/hooks/tunefleet"])
    events: list[str] = Field(default_factory=lambda: [ALL], description=f"Types to send, or [\"*\"] for all: "
                                                                         f"{', '.join(EVENT_TYPES)}.")
    description: str | None = Field(default=None, max_length=500)

    @field_validator("description")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        if value is not None and ("\x00" in value or value != value.encode(errors="ignore").decode()):
            raise ValueError("holds a NUL character or an unpaired surrogate, which cannot be stored; give plain text")
        return value


class WebhookPublic(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str | None
    created_at: datetime
    disabled_at: datetime | None = Field(description="Set when the receiver answered 410 Gone; nothing is sent "
                                                     "after it.")
    disabled_reason: str | None


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="The signing secret (Standard Webhooks, whsec_...): shown only now; keep it to "
                                    "verify each request's webhook-signature.")


class AttemptPublic(BaseModel):
    attempt: int
    at: datetime
    http_status: int | None
    error: str | None
    response_body: str | None = Field(description="The first 1 KB of the answer.")
    duration_ms: int


class DeliveryPublic(BaseModel):
    id: str
    event_id: str = Field(description="The webhook-id header: the same on every retry.")
    type: str
    status: str = Field(description="pending, delivered, or failed (given up).")
    attempts: int
    next_attempt_at: datetime | None = Field(description="When it is tried next, while pending.")
    created_at: datetime
    attempt_log: list[AttemptPublic]


def _public(row) -> dict:
    return {**{k: row[k] for k in ("url", "events", "description", "created_at", "disabled_at", "disabled_reason")},
            "id": str(row["id"])}


def _check_events(events: list[str]) -> list[str]:
    if not events:
        raise ValidationFailed('events is empty: name the types to send, or ["*"] for all', field="events")
    unknown = [e for e in events if e != ALL and e not in EVENT_TYPES]
    if unknown:
        raise ValidationFailed(f"events: unknown type(s) {', '.join(map(ascii, unknown))}; use [\"*\"] or any of "
                               f"{', '.join(EVENT_TYPES)}", field="events")
    return [ALL] if ALL in events else sorted(set(events), key=EVENT_TYPES.index)


async def _check_url(settings: Settings, url: str) -> None:
    try:
        parsed = urls.parse(url)
        if not settings.allow_private_urls:
            await urls.checked_address(parsed)
    except urls.BadWebhookUrl as exc:
        raise ValidationFailed(f"url {exc}", field="url") from None
    except BlockedAddress as exc:
        raise ValidationFailed(f"url: {exc}; webhooks are sent from this server", field="url") from None


async def _owned(pool, user: str, webhook_id: uuid.UUID):
    row = await store.get_endpoint(pool, user, webhook_id)
    if row is None:
        raise NotFound(f"no webhook {webhook_id} of yours; GET /api/webhooks lists them", field="webhook_id")
    return row


@router.post("", status_code=201, response_model=WebhookCreated)
async def create_webhook(body: WebhookCreate, user: CurrentUser, pool: PoolDep, settings: SettingsDep) -> dict:
    """Make a webhook. Its signing secret is in this answer and never again."""
    events = _check_events(body.events)
    await _check_url(settings, body.url)
    if settings.secret_key is None:
        raise ServiceUnavailable("TUNEFLEET_SECRET_KEY is not set; webhooks cannot be made")
    if await store.count_endpoints(pool, user) >= MAX_WEBHOOKS_PER_USER:
        raise QuotaExceeded(f"you have {MAX_WEBHOOKS_PER_USER} webhooks, the most one user may have: delete one "
                            "(DELETE /api/webhooks/{id}) first")
    secret = new_secret()
    row = await store.create_endpoint(pool, user, body.url, events, body.description,
                                      seal_secret(settings.require_secret_key(), secret))
    return {**_public(row), "secret": secret}


@router.get("", response_model=list[WebhookPublic])
async def list_webhooks(user: CurrentUser, pool: PoolDep) -> list[dict]:
    return [_public(r) for r in await store.list_endpoints(pool, user)]


@router.get("/{webhook_id}", response_model=WebhookPublic)
async def get_webhook(webhook_id: uuid.UUID, user: CurrentUser, pool: PoolDep) -> dict:
    return _public(await _owned(pool, user, webhook_id))


@router.delete("/{webhook_id}", status_code=204)
async def delete_webhook(webhook_id: uuid.UUID, user: CurrentUser, pool: PoolDep) -> None:
    """Delete a webhook and its delivery log; nothing more is sent to it."""
    if not await store.delete_endpoint(pool, user, webhook_id):
        raise NotFound(f"no webhook {webhook_id} of yours; GET /api/webhooks lists them", field="webhook_id")


@router.post("/{webhook_id}/test", status_code=202)
async def test_webhook(webhook_id: uuid.UUID, user: CurrentUser, pool: PoolDep) -> dict:
    """Send a ``webhook.test`` event to this webhook, signed and retried like any other; see its deliveries."""
    row = await _owned(pool, user, webhook_id)
    notice = webhook_test_notice(str(uuid.uuid4()), user, str(webhook_id))
    if not await store.queue_deliveries(pool, notice, endpoint_id=row["id"]):
        raise Conflict(f"the webhook is disabled ({row['disabled_reason']}); create it again to receive events",
                       field="webhook_id")
    return {"event_id": notice.event_id, "type": notice.type}


@router.get("/{webhook_id}/deliveries", response_model=list[DeliveryPublic])
async def webhook_deliveries(webhook_id: uuid.UUID, user: CurrentUser, pool: PoolDep,
                             limit: int = Query(50, ge=1, le=200)) -> list[dict]:
    """The latest deliveries, newest first, each with its attempts."""
    await _owned(pool, user, webhook_id)
    return [{**{k: d[k] for k in ("event_id", "status", "attempts", "created_at")}, "id": str(d["id"]),
             "type": d["event_type"], "next_attempt_at": d["next_attempt_at"] if d["status"] == PENDING else None,
             "attempt_log": d["attempt_log"]}
            for d in await store.deliveries(pool, user, webhook_id, limit)]
