"""``tunefleet jobs …``: list, show, logs, watch, stop and retry training jobs on a gateway. A job is named by its id,
a unique id prefix or its name (the newest job of that name; ``stop`` and ``retry`` refuse a name several jobs
share). Exit codes: see ``services.cli.client``."""

from __future__ import annotations

import time

import typer
from rich.markup import escape

from shared.states import JobStatus

from .client import ExitCode, Gateway, handled
from .follow import LOG_POLL_S, follow
from .logs import LogSource
from .tables import job_detail, jobs_table, out, print_json, table

jobs = typer.Typer(help="Training jobs: list, show, logs, watch, stop, retry.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="Print the API's JSON instead of a table.")
DETACH_OPTION = typer.Option(False, "-d", "--detach", help="Do not follow the job; print its id and return.")


def watch_hint(job_id: str) -> str:
    return f"follow it with: tunefleet jobs watch {job_id}"


@jobs.command("list")
@handled
def list_jobs(limit: int = typer.Option(50, min=1, max=5000, help="At most this many, newest first."),
              status: list[JobStatus] = typer.Option(None, "--status", help="Only jobs in this state (repeatable)."),
              as_json: bool = JSON_OPTION) -> None:
    """Your jobs, newest first: id, name, status, provider, GPU, $/h, cost so far, ETA, attempts, error."""
    with Gateway.open() as gateway:
        found = gateway.pages("/api/training/jobs", limit=min(limit, 500), cap=limit)[:limit]
    if status:
        found = [j for j in found if j["status"] in set(status)]
    if as_json:
        print_json(found)
        return
    out.print(jobs_table(found))


@jobs.command("show")
@handled
def show_job(job: str = typer.Argument(..., help="Job id, unique id prefix or name."),
             as_json: bool = JSON_OPTION) -> None:
    """A job's status, progress, cost, history and its attempts' errors."""
    with Gateway.open() as gateway:
        found = gateway.job(job)
        errors = gateway.get(f"/api/training/jobs/{found['job_id']}/errors")["errors"]
    if as_json:
        print_json({**found, "errors": errors})
        return
    out.print(job_detail(found))
    if found.get("history"):
        out.print(table(("WHEN", "STATUS", "REASON"), ((str(h.get("occurred_at", "-"))[:19], h["status"],
                                                        escape(h.get("reason") or "")) for h in found["history"])))
    for error in errors:
        field = f" (field {error['error_field']})" if error.get("error_field") else ""
        out.print(f"[red]attempt {error['attempt']} {error['phase']}[/]: {escape(error['error_type'])}: "
                  f"{escape(error['error_message'])}{escape(field)}", highlight=False, soft_wrap=True)


@jobs.command("logs")
@handled
def job_logs(job: str = typer.Argument(..., help="Job id, unique id prefix or name."),
             follow_: bool = typer.Option(False, "-f", "--follow", help="Keep printing new lines until the job ends."),
             query: str = typer.Option(None, "-q", "--grep", help="Only lines containing this text."),
             as_json: bool = JSON_OPTION) -> None:
    """The job's log lines (every attempt's), oldest first."""
    with Gateway.open() as gateway:
        found = gateway.job(job)
        source = LogSource(gateway, found["job_id"], query=query)
        if as_json:
            print_json({"job_id": found["job_id"], "lines": [
                {"attempt": line.attempt, "number": line.number, "text": line.text} for line in source.read()]})
            return
        attempt: int | None = None

        def show(lines) -> None:
            nonlocal attempt
            for line in lines:
                if line.attempt is not None and line.attempt != attempt and (attempt or line.attempt > 1):
                    out.print(f"[dim]--- attempt {line.attempt} ---[/]")
                attempt = line.attempt if line.attempt is not None else attempt
                out.print(line.text, markup=False, highlight=False, soft_wrap=True)

        try:
            show(source.read())
            while follow_ and not JobStatus(gateway.job(found["job_id"])["status"]).is_terminal:
                time.sleep(LOG_POLL_S)
                show(source.read())
            if follow_:
                show(source.read())  # what it logged as it ended
        except KeyboardInterrupt:
            raise typer.Exit(int(ExitCode.DETACHED)) from None


@jobs.command("watch")
@handled
def watch_job(job: str = typer.Argument(..., help="Job id, unique id prefix or name.")) -> None:
    """Follow a job live: progress bar (step/total, loss, ETA, cost) and new log lines. Ctrl-C detaches (the job
    goes on; exit 130). Exit code: 0 completed, 1 failed, 3 stopped, 4 budget exceeded."""
    with Gateway.open() as gateway:
        found = gateway.job(job)
        raise typer.Exit(int(follow(gateway, found["job_id"])))


@jobs.command("stop")
@handled
def stop_job(job: str = typer.Argument(..., help="Job id, unique id prefix, or a name only one job has."),
             wait: bool = typer.Option(False, "--wait", help="Follow it until it has stopped.")) -> None:
    """Ask for the job to stop; it ends ``stopped`` once its provider has ended the workload."""
    with Gateway.open() as gateway:
        found = gateway.job(job, newest_of_name=False)
        answer = gateway.post(f"/api/training/jobs/{found['job_id']}/stop")
        if JobStatus(answer["status"]).is_terminal:
            out.print(f"job {answer['job_id']} had already ended {answer['status']}")
            return
        out.print(f"stop requested for job {answer['job_id']} ({answer['status']}); {watch_hint(answer['job_id'])}")
        if wait:
            code = follow(gateway, answer["job_id"])
            raise typer.Exit(0 if code == ExitCode.STOPPED else int(code))


@jobs.command("retry")
@handled
def retry_job(job: str = typer.Argument(..., help="Job id, unique id prefix, or a name only one job has."),
              detach: bool = DETACH_OPTION) -> None:
    """Deploy the job again as it was deployed (POST /api/training/jobs/{id}/retry): a new job, followed unless -d.
    The original goes on if it had not ended (stop it with tunefleet jobs stop)."""
    with Gateway.open() as gateway:
        found = gateway.job(job, newest_of_name=False)
        answer = gateway.post(f"/api/training/jobs/{found['job_id']}/retry")
        out.print(f"retry of {found['job_id']}: job [bold]{answer['job_id']}[/] on {answer['provider']} "
                  f"({answer['status']})", highlight=False)
        if detach:
            out.print(watch_hint(answer["job_id"]), highlight=False)
            return
        raise typer.Exit(int(follow(gateway, answer["job_id"])))

