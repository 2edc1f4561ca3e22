"""The CLI's client of a TuneFleet gateway: authenticated requests, the API's refusals turned into readable
errors with an exit code, and finding a job, model, configuration or data set by id, id prefix or name.

Exit codes (every command that talks to a gateway):

==== =================================================================================================
0    done; a followed job completed
1    a followed job failed; or the gateway refused the request (not found, conflict, key refused ...)
2    bad input: a usage error, a configuration or data set the API refused (422), an unknown or ambiguous
     reference, no API key
3    a followed job was stopped
4    a followed job ended at its budget (budget_exceeded)
5    the gateway could not be reached
130  Ctrl-C while following: detached, the job goes on
==== =================================================================================================
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape

from shared.states import JobStatus

from . import credentials


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1
    BAD_INPUT = 2
    STOPPED = 3
    BUDGET_EXCEEDED = 4
    UNREACHABLE = 5
    DETACHED = 130


#: How a followed job's end becomes the command's exit status. Only terminal states end a follow.
STATUS_EXIT: dict[JobStatus, ExitCode] = {
    JobStatus.COMPLETED: ExitCode.OK,
    JobStatus.FAILED: ExitCode.FAILED,
    JobStatus.STOPPED: ExitCode.STOPPED,
    JobStatus.BUDGET_EXCEEDED: ExitCode.BUDGET_EXCEEDED,
}

err = Console(stderr=True)

#: Times a read answered 503 is sent again.
READ_RETRIES = 3
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


class CliError(Exception):
    """A failure to report to the person and the exit code it ends the command with."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED, lines: Sequence[str] = ()):
        super().__init__(message)
        self.message, self.code, self.lines = message, code, list(lines)


def handled(command: Callable) -> Callable:
    """Wrap a command so that a CliError or an unreachable gateway prints one clear message and exits with its code."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except CliError as exc:
            report(exc)
            raise typer.Exit(int(exc.code)) from None
        except httpx.TransportError as exc:
            report(unreachable(exc))
            raise typer.Exit(int(ExitCode.UNREACHABLE)) from None

    return run


def report(exc: CliError) -> None:
    err.print(f"[red]error[/]: {escape(exc.message)}", highlight=False, soft_wrap=True)
    for line in exc.lines:
        err.print(f"  {escape(line)}", highlight=False, soft_wrap=True)


def unreachable(exc: httpx.TransportError) -> CliError:
    try:
        url = exc.request.url
        where = f"{url.scheme}://{url.netloc.decode()}"
    except RuntimeError:
        where = "the gateway"
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else type(exc).__name__
    return CliError(f"cannot reach the gateway at {where} ({what}: {exc})", ExitCode.UNREACHABLE, [
        f"is it running (tunefleet up)? set {credentials.URL_ENV}=http://host:port, or run "
        "`tunefleet login --url http://host:port`"])


def route_missing(response: httpx.Response) -> bool:
    """A 404 of the web framework (no such route) rather than of TuneFleet (no such job): its detail is a string."""
    if response.status_code != 404:
        return False
    try:
        return not isinstance(response.json().get("detail"), dict)
    except (ValueError, AttributeError):
        return True


def api_error(response: httpx.Response) -> CliError:
    """The gateway's refusal as a CliError: every field with its problem (which names the fix) for a 422."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = response.text[:500]
    request = response.request
    if route_missing(response):
        return CliError(f"the gateway has no {request.method} {request.url.path} (is it older than this CLI?)")
    if not isinstance(detail, dict):
        return CliError(f"{response.status_code}: {detail}", ExitCode.BAD_INPUT if response.status_code == 422
                        else ExitCode.FAILED)
    code, message = detail.get("code", ""), detail.get("message", "")
    details = detail.get("details") or {}
    if response.status_code == 401:
        return CliError(f"the API key was refused: {message}", ExitCode.FAILED, [
            f"set {credentials.KEY_ENV}, or run `tunefleet login` (an admin makes keys with `tunefleet keys create "
            "--user NAME`)"])
    if response.status_code == 422:
        lines = [f"{e['field']}: {e['problem']}" for e in detail.get("errors") or []]
        lines += [f"line {e['line']}: {e['problem']}" for e in details.get("errors") or []]
        if not lines and detail.get("field"):
            lines = [f"{detail['field']}: {message}"]
        headline, each = (("the data set was refused", "each bad line") if code == "dataset_invalid" else
                          ("refused", "each field"))
        return CliError(f"{headline} ({code or 'validation_failed'}): {message}" if not lines else
                        f"{headline} ({code or 'validation_failed'}); {each} and its problem:",
                        ExitCode.BAD_INPUT, lines)
    return CliError(f"{response.status_code} {code}: {message}".replace("  ", " "))


class Gateway:
    """An authenticated client of one gateway. ``transport`` is for tests (httpx.MockTransport)."""

    def __init__(self, creds: credentials.Credentials, *, transport: httpx.BaseTransport | None = None,
                 timeout: float = 60.0):
        if not creds.key:
            raise CliError("no API key", ExitCode.BAD_INPUT, [
                f"set {credentials.KEY_ENV}, or run `tunefleet login` (an admin makes keys with `tunefleet keys "
                "create --user NAME`)"])
        self.creds = creds
        self.url = creds.url
        self.http = httpx.Client(base_url=creds.url, headers={"Authorization": f"Bearer {creds.key}"},
                                 timeout=timeout, transport=transport)

    @classmethod
    def open(cls, url: str | None = None, key: str | None = None, **kwargs) -> Gateway:
        return cls(credentials.resolve(url, key), **kwargs)

    def clone(self) -> Gateway:
        return Gateway(self.creds, transport=self.http._transport)

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, *, ok: Sequence[int] = (200, 201, 202, 204), **kwargs) -> httpx.Response:
        """The answer, when its status is one of ``ok``; else the refusal as a CliError. A read the gateway answers
        503 (its database or bus restarting) is sent again after its Retry-After, a few times."""
        for attempt in range(READ_RETRIES + 1):
            response = self.http.request(method, path, **kwargs)
            if response.status_code != 503 or method != "GET" or attempt == READ_RETRIES:
                break
            time.sleep(min(float(response.headers.get("retry-after") or 1), 10.0))
        if response.status_code not in ok:
            raise api_error(response)
        return response

    def get(self, path: str, **params) -> Any:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def post(self, path: str, body: Any = None, **kwargs) -> Any:
        response = self.call("POST", path, json=body, **kwargs)
        return response.json() if response.content else None

    def put(self, path: str, body: Any) -> Any:
        return self.call("PUT", path, json=body).json()

    def delete(self, path: str) -> None:
        self.call("DELETE", path)

    def pages(self, path: str, field: str | None = None, *, limit: int = 500, cap: int = 5000) -> list[dict]:
        """Every item of a listing, page by page: a plain list, or ``field`` of a ``{total_count, ...}`` page."""
        items: list[dict] = []
        while len(items) < cap:
            page = self.get(path, limit=limit, offset=len(items))
            batch = page if field is None else page[field]
            items.extend(batch)
            if len(batch) < limit:
                break
        return items

    # --- finding things by reference ---------------------------------------------------------------------------

    def job(self, ref: str, *, newest_of_name: bool = True) -> dict:
        """A job by id, unique id prefix or name (``newest_of_name``: the newest job of that name, else a name
        that several jobs share is ambiguous)."""
        if _UUID.fullmatch(ref):
            return self.get(f"/api/training/jobs/{ref}")
        return pick(self.pages("/api/training/jobs"), ref, kind="job", ids=("job_id",), names=("name",),
                    newest=(lambda found: found[0]) if newest_of_name else None, describe=describe_job)

    def model(self, ref: str) -> dict:
        """A model by id, job id, unique prefix of either, or name (the newest version of that name)."""
        if _UUID.fullmatch(ref):
            response = self.call("GET", f"/api/models/{ref}", ok=(200, 404))
            if response.status_code == 200:
                return response.json()
        return pick(self.pages("/api/models"), ref, kind="model", ids=("id", "job_id"), names=("name",),
                    newest=lambda found: max(found, key=lambda m: (m.get("version", 1), m["created_at"])),
                    describe=lambda m: f"{m['id'][:8]}  {m['name']} v{m.get('version', 1)}  {m['created_at'][:19]}")

    def configuration(self, ref: str) -> dict:
        """A saved configuration by id, unique id prefix or its config's name (the newest of that name)."""
        if _UUID.fullmatch(ref):
            return self.get(f"/api/training/configurations/{ref}")
        return pick(self.pages("/api/training/configurations", "configurations"), ref, kind="configuration",
                    ids=("id",), names=(), name_of=lambda c: c["config"].get("name"), newest=lambda found: found[0],
                    describe=lambda c: f"{c['id'][:8]}  {c['config'].get('name')}  updated {c['updated_at'][:19]}")

    def dataset(self, ref: str) -> dict:
        """A data set by id, unique id prefix or file name (the newest upload of that name)."""
        if _UUID.fullmatch(ref):
            return self.get(f"/api/training/datasets/{ref}")
        return pick(self.pages("/api/training/datasets", "datasets"), ref, kind="data set", ids=("id",),
                    names=("filename",), newest=lambda found: found[0],
                    describe=lambda d: f"{d['id'][:8]}  {d['filename']}  {d['rows']} rows  {d['created_at'][:19]}")


def describe_job(job: dict) -> str:
    return (f"{job['job_id'][:8]}  {job.get('name') or '-'}  {job['status']}  {job['provider']}  "
            f"{job['created_at'][:19]}")


def pick(items: Sequence[dict], ref: str, *, kind: str, ids: Sequence[str], names: Sequence[str] = (),
         name_of: Callable[[dict], str | None] | None = None,
         newest: Callable[[list[dict]], dict] | None = None,
         describe: Callable[[dict], str] = str) -> dict:
    """The one item ``ref`` names: its id; else its name (``newest`` chooses among several of one name; without it
    they are ambiguous); else the one item whose id starts with ``ref``. Several prefix matches are ambiguous:
    the error lists them."""
    ref = ref.strip()
    if not ref:
        raise CliError(f"name a {kind} by id, id prefix or name", ExitCode.BAD_INPUT)

    def name(item: dict) -> list[str | None]:
        return [item.get(n) for n in names] + ([name_of(item)] if name_of else [])

    exact = [i for i in items if any(i.get(k) == ref for k in ids)]
    if exact:
        return exact[0]
    named = [i for i in items if ref in name(i)]
    if len(named) == 1 or (named and newest):
        return newest(named) if newest else named[0]
    if named:
        raise ambiguous(kind, ref, named, describe, "name")
    lowered = ref.lower()
    prefixed = [i for i in items if any(str(i.get(k) or "").lower().startswith(lowered) for k in ids)]
    if len(prefixed) == 1:
        return prefixed[0]
    if prefixed:
        raise ambiguous(kind, ref, prefixed, describe, "prefix")
    raise CliError(f"no {kind} {ref!r}: give its id, a unique id prefix or its name", ExitCode.BAD_INPUT)


def ambiguous(kind: str, ref: str, found: list[dict], describe: Callable[[dict], str], how: str) -> CliError:
    shown = [describe(i) for i in found[:20]] + ([f"... and {len(found) - 20} more"] if len(found) > 20 else [])
    return CliError(f"{how} {ref!r} matches {len(found)} {kind}s; give more of the id:", ExitCode.BAD_INPUT, shown)

