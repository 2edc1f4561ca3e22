"""How the CLI shows the API's objects: JSON for programs (``--json``, the API's own objects), rich tables for
people. The jobs table has the dashboard's columns: id, name, status, provider, GPU, $/h, cost so far, ETA,
attempts, error, created."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shared.states import TERMINAL, JobStatus


class _Out:
    """Standard output as a rich Console made at each use, so it takes the terminal's width (or COLUMNS) as it is
    when a command prints, not as it was when this module was imported."""

    def __getattr__(self, name: str):
        return getattr(Console(highlight=False), name)


out = _Out()

STATUS_STYLE = {"completed": "green", "failed": "red", "stopped": "yellow", "budget_exceeded": "magenta",
                "running": "cyan", "preempted": "yellow"}
#: States whose reason is an error worth a column.
ERROR_STATES = {JobStatus.FAILED, JobStatus.STOPPED, JobStatus.BUDGET_EXCEEDED}


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()


def short(identifier: str | None) -> str:
    return (identifier or "-")[:8]


def money(value: float | None, digits: int | None = None) -> str:
    """USD: with ``digits`` decimals (as the dashboard shows $/h with 3, cost so far with 4); else 2, or 4 for
    amounts under a cent."""
    if value is None:
        return "-"
    if digits is None:
        digits = 4 if 0 < abs(value) < 0.01 else 2
    return f"${value:.{digits}f}"


def duration(seconds: float | None) -> str:
    if seconds is None or seconds < 0:
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _moment(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def eta_seconds(job: dict, now: datetime | None = None) -> float | None:
    """Time left for an unfinished job: its time since it started, scaled by the progress still to make (the
    dashboard's ETA)."""
    progress = (job.get("live_cost") or {}).get("progress") or job.get("progress")
    started = _moment(job.get("started_at"))
    if not progress or not 0 < progress < 1 or started is None or job.get("status") in TERMINAL:
        return None
    elapsed = ((now or datetime.now(UTC)) - started).total_seconds()
    return elapsed * (1 - progress) / progress


def gpu(job: dict) -> str:
    name = job.get("gpu_type")
    if not name:
        return "-"
    return f"{job.get('gpu_count', 1)}x {name}" if job.get("gpu_count", 1) > 1 else name


def error_of(job: dict) -> str:
    status = job.get("status")
    return (job.get("status_reason") or "") if status in ERROR_STATES else ""


def styled_status(status: str) -> str:
    style = STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


def job_row(job: dict) -> list[str]:
    live, billed = job.get("live_cost") or {}, job.get("cost") or {}
    per_hour = live.get("cost_per_hour", billed.get("cost_per_hour"))
    return [short(job["job_id"]), escape(job.get("name") or "-"), styled_status(job["status"]), job["provider"],
            escape(gpu(job)), money(per_hour, 3), money(live.get("cost_so_far", job.get("cost_usd")), 4),
            duration(eta_seconds(job)), str(job.get("attempt", 1)), escape(_clip(error_of(job), 60)),
            (job.get("created_at") or "-")[:16].replace("T", " ")]


#: The dashboard's jobs list's columns (services/gateway/dashboard/static/js/pages/jobs.js), its Job as ID and NAME.
JOB_COLUMNS = ("ID", "NAME", "STATUS", "PROVIDER", "GPU", "$/H", "COST", "ETA", "ATTEMPTS", "ERROR", "CREATED")


def table(columns: Sequence[str], rows: Iterable[Sequence[str]], title: str | None = None) -> Table:
    grid = Table(*columns, title=title, box=None, header_style="bold", pad_edge=False)
    for row in rows:
        grid.add_row(*row)
    return grid


def jobs_table(jobs: list[dict]) -> Table:
    return table(JOB_COLUMNS, (job_row(j) for j in jobs))


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def job_detail(job: dict) -> Table:
    live = job.get("live_cost") or {}
    metrics = job.get("metrics") or {}
    rows = [("job", job["job_id"]), ("name", job.get("name") or "-"), ("status", styled_status(job["status"]) + (
        f" ({escape(job['status_reason'])})" if job.get("status_reason") else "")), ("provider", job["provider"]),
        ("gpu", escape(gpu(job))), ("attempt", str(job.get("attempt", 1))),
        ("progress", "-" if job.get("progress") is None else f"{100 * job['progress']:.0f}%" + (
            f", step {metrics['step']}" if metrics.get("step") is not None else "") + (
            f", loss {metrics['loss']:.4f}" if metrics.get("loss") is not None else "")),
        ("eta", duration(eta_seconds(job))),
        ("cost", f"{money(live.get('cost_so_far'))} so far at {money(live.get('cost_per_hour'))}/h; projected "
                 f"{money(live.get('projected_total'))}; budget {money(live.get('budget_limit'))}"),
        ("created", job.get("created_at") or "-"), ("started", job.get("started_at") or "-"),
        ("finished", job.get("finished_at") or "-"), ("workload", escape(job.get("pod_url") or job.get("pod_id")
                                                                          or "-")),
        ("model", job.get("model_id") or "-")]
    grid = Table(show_header=False, box=None, pad_edge=False)
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in rows:
        grid.add_row(name, value)
    return grid
