"""Job emails: what they say, and sending them through the operator's SMTP server (``TUNEFLEET_SMTP_*``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import aiosmtplib
import asyncpg
from pydantic import EmailStr, TypeAdapter, ValidationError

from shared.settings import Settings

from . import store
from .payloads import BUDGET_ALERT, Notice
from .retry import FAILED, RetryPolicy

log = logging.getLogger(__name__)

#: The types a job email is sent for.
EMAILED = frozenset({"job.completed", "job.failed", "job.budget_exceeded", BUDGET_ALERT})
#: Longest wait for the SMTP server, and how long past it a claimed email stays with its process.
SMTP_TIMEOUT_S = 30.0
LEASE_S = SMTP_TIMEOUT_S + 60.0

_ADDRESS = TypeAdapter(EmailStr)


def valid_address(address: str) -> str | None:
    """``address`` normalised when it is a well-formed email address, else None."""
    try:
        return _ADDRESS.validate_python(address)
    except ValidationError:
        return None


def _usd(value: float | None) -> str:
    return f"${value:,.2f}" if value is not None else "unknown"


def _cost_lines(cost: dict[str, Any] | None) -> list[str]:
    if not cost:
        return ["Cost so far: not reported."]
    spent = f"Cost so far: {_usd(cost.get('cost_so_far'))}"
    if cost.get("budget_limit") is not None:
        spent += f" of a {_usd(cost['budget_limit'])} budget ({_usd(cost.get('budget_remaining'))} left)"
    lines = [spent + "."]
    if cost.get("projected_total") is not None:
        lines.append(f"Projected total: {_usd(cost['projected_total'])}.")
    if cost.get("cost_per_hour") is not None:
        lines.append(f"Price: {_usd(cost['cost_per_hour'])} per hour.")
    return lines


def _what_happened(notice: Notice) -> str:
    data = notice.data
    if notice.type != BUDGET_ALERT:
        return {"job.completed": "completed", "job.failed": "failed",
                "job.budget_exceeded": "was stopped: it reached its budget"}.get(notice.type, data.get("status", ""))
    if data.get("kind") == "limit_reached":
        return "reached its budget and goes on running (auto_stop_on_budget is off)"
    pct = data.get("threshold_pct")
    return f"has used {pct:g}% of its budget" if pct is not None else "crossed its budget alert threshold"


def compose(notice: Notice) -> tuple[str, str]:
    """The subject and plain-text body of ``notice``'s email."""
    data = notice.data
    name = data.get("job_name") or "(unnamed)"
    happened = _what_happened(notice)
    lines = [f"Your TuneFleet job {name!r} ({data['job_id']}) {happened}.", ""]
    if data.get("reason"):
        lines += [f"Reason: {data['reason']}", ""]
    lines += _cost_lines(data.get("cost"))
    lines += ["", f"Provider: {data.get('provider')}", f"When: {notice.occurred_at:%Y-%m-%d %H:%M:%S %Z}", "",
              "-- TuneFleet. This address gets the job's emails because the job names it (notify_email) or because it "
              "is your notification address (PUT /api/notifications/email)."]
    return f"TuneFleet: job {name!r} {happened}", "\n".join(lines)


class Mailer:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, policy: RetryPolicy):
        self.pool, self.settings, self.policy = pool, settings, policy

    async def claim(self) -> list[asyncpg.Record]:
        return await store.claim_emails(self.pool, LEASE_S)

    def message(self, row: asyncpg.Record) -> EmailMessage:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.settings.smtp_from, row["recipient"], row["subject"]
        message["Message-ID"] = f"<{row['event_id']}@tunefleet>"  # the same on a retry, for servers that dedupe
        message.set_content(row["body"])
        return message

    async def send(self, row: asyncpg.Record) -> None:
        s, tries, now = self.settings, row["attempts"] + 1, datetime.now(UTC)
        error, final = None, False
        try:
            await aiosmtplib.send(
                self.message(row), hostname=s.smtp_host, port=s.smtp_port, username=s.smtp_user or None,
                password=(s.smtp_password.get_secret_value() or None) if s.smtp_password else None,
                use_tls=s.smtp_tls == "tls", start_tls={"starttls": True, "none": False}.get(s.smtp_tls),
                timeout=SMTP_TIMEOUT_S)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            error, final = f"the server refused the recipient: {exc}", True
        except (aiosmtplib.SMTPException, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        outcome = self.policy.after(ok=error is None, final=final, tries=tries,
                                    first_try=row["first_attempt_at"] or now, now=now)
        await store.record_email(self.pool, row["id"], tries, now, outcome, error)
        if error is None:
            log.info("email %s for event %s sent", row["id"], row["event_id"])
        elif outcome.status == FAILED:
            log.warning("email %s for event %s given up after %s tries: %s", row["id"], row["event_id"], tries, error)
        else:
            log.info("email %s for event %s, try %s failed: %s", row["id"], row["event_id"], tries, error)
