"""Following a job in the terminal (``deploy`` and ``jobs watch``): its server-sent events drive a progress bar
(step/total, loss, ETA, cost) and its new log lines print above it. Ctrl-C detaches and never stops the job. The
exit code says how the job ended (``client.STATUS_EXIT``)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn

from shared.states import TERMINAL, JobStatus

from .client import STATUS_EXIT, CliError, ExitCode, Gateway, api_error, err
from .logs import LogLine, LogSource
from .sse import iter_events
from .tables import duration, money, out

#: Seconds between reads of new log lines, and between progress lines when the output is not a terminal.
LOG_POLL_S = 2.0
PLAIN_EVERY_S = 2.0
#: Lines of what a job logged before following began that are shown.
FIRST_LINES = 20
#: Broken streams in a row tolerated before the gateway counts as unreachable.
MAX_RECONNECTS = 8


@dataclass
class JobState:
    """What the bar shows, updated from each event."""

    job_id: str
    status: str = "queued"
    reason: str | None = None
    attempt: int = 1
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    cost_so_far: float | None = None
    cost_per_hour: float | None = None
    _rate_from: tuple[float, int] | None = None
    _rate: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def apply(self, event: str, data: dict) -> str | None:
        """Take in one event; a line worth printing about it, if any."""
        if event == "snapshot":
            self.status, self.reason, self.attempt = data["status"], data.get("status_reason"), data.get("attempt", 1)
            latest = data.get("latest_metrics") or {}
            self._take_step(latest.get("step"), latest.get("loss"))
            self._take_cost(data.get("live_cost") or {})
            self._take_progress(data.get("progress"))
            return None
        if event == "status":
            before, self.status, self.reason = self.status, data["status"], data.get("reason")
            self._take_cost(data.get("cost") or {})
            if data["status"] == JobStatus.QUEUED and before == JobStatus.PREEMPTED:
                self.attempt, self._rate_from = self.attempt + 1, None
            changed = before != self.status and self.reason and not self.terminal
            return f"{self.status}: {self.reason}" if changed else None  # the bar shows the status itself
        if event == "metrics":
            if data.get("attempt", self.attempt) != self.attempt:
                self.attempt, self._rate_from = data["attempt"], None
            for point in data.get("metrics") or []:
                self._take_step(point.get("step"), (point.get("values") or {}).get("loss"))
            return None
        if event == "cost":
            self._take_cost(data.get("cost") or {})
            return None
        if event == "budget_alert":
            cost = data.get("cost") or {}
            return (f"budget alert ({data.get('kind')}): {money(cost.get('cost_so_far'))} of "
                    f"{money(cost.get('budget_limit'))}")
        if event == "predictions":
            shown = [f"step {p['step']} sample {p['sample_index']}: {' '.join(p['generated'].split())[:80]}"
                     for p in (data.get("predictions") or [])[:2]]
            return "\n".join(shown) or None
        return None

    def _take_step(self, step: int | None, loss: float | None) -> None:
        if step is not None:
            now = time.monotonic()
            if self._rate_from is None or step < self._rate_from[1]:
                self._rate_from = (now, step)
            elif step > self._rate_from[1]:
                self._rate = (step - self._rate_from[1]) / max(now - self._rate_from[0], 1e-6)
            self.step = step
        if loss is not None:
            self.loss = loss

    def _take_cost(self, cost: dict) -> None:
        if cost.get("cost_so_far") is not None:
            self.cost_so_far = cost["cost_so_far"]
        if cost.get("cost_per_hour") is not None:
            self.cost_per_hour = cost["cost_per_hour"]
        self._take_progress(cost.get("progress"))

    def _take_progress(self, progress: float | None) -> None:
        if self.total is None and progress and self.step:
            self.total = max(self.step, round(self.step / progress))

    @property
    def eta(self) -> float | None:
        if self.total is None or self.step is None or not self._rate or self.terminal:
            return None
        return max(self.total - self.step, 0) / self._rate

    def fields(self) -> dict[str, str]:
        return {"steps": f"step {self.step or 0}/{self.total or '?'}",
                "loss": "" if self.loss is None else f"loss {self.loss:.4f}",
                "eta": f"eta {duration(self.eta)}" if self.eta is not None else "",
                "cost": f"{money(self.cost_so_far or 0.0)}" + (
                    f" at {money(self.cost_per_hour)}/h" if self.cost_per_hour else "")}


class BarView:
    """A rich progress bar, for a terminal."""

    def __init__(self, console: Console):
        fields = (TextColumn(f"{{task.fields[{name}]}}") for name in ("steps", "loss", "eta", "cost"))
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), *fields, console=console)
        self.task = None

    def __enter__(self) -> BarView:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def show(self, state: JobState) -> None:
        done = state.total if state.status == JobStatus.COMPLETED and state.total else state.step or 0
        if self.task is None:
            self.task = self.progress.add_task(state.status, total=state.total, completed=done, **state.fields())
        self.progress.update(self.task, description=state.status, total=state.total, completed=done,
                             **state.fields())

    def line(self, text: str) -> None:
        self.progress.console.print(escape(text), highlight=False, soft_wrap=True)


class PlainView:
    """A line per status change and at most one progress line every PLAIN_EVERY_S, for logs and pipes."""

    def __init__(self, console: Console):
        self.console, self.last, self.shown = console, 0.0, ""

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def show(self, state: JobState) -> None:
        text = "  ".join(v for v in (state.status, *state.fields().values()) if v)
        now = time.monotonic()
        if text != self.shown and (now - self.last >= PLAIN_EVERY_S or state.terminal or state.step == state.total):
            self.console.print(escape(text), highlight=False, soft_wrap=True)
            self.last, self.shown = now, text

    def line(self, text: str) -> None:
        self.console.print(escape(text), highlight=False, soft_wrap=True)


class LogPrinter:
    """Prints each log line once, whether it came on the event stream or from a read of the logs: numbered lines
    are told apart by attempt and number."""

    def __init__(self, view, job_id: str):
        self.view, self.job_id = view, job_id
        self.seen: set[tuple[int | None, int]] = set()
        self.lock = threading.Lock()

    def print(self, lines: list[LogLine], *, at_most: int | None = None) -> None:
        with self.lock:
            fresh = []
            for line in lines:
                if line.number is not None:
                    if (line.attempt, line.number) in self.seen:
                        continue
                    self.seen.add((line.attempt, line.number))
                fresh.append(line)
            if at_most is not None and len(fresh) > at_most:
                self.view.line(f"… {len(fresh) - at_most} earlier lines (tunefleet jobs logs {self.job_id})")
                fresh = fresh[-at_most:]
            for line in fresh:
                self.view.line(line.text)


class LogPump(threading.Thread):
    """Reads new log lines every LOG_POLL_S on a client of its own, and hands them to the printer."""

    def __init__(self, gateway: Gateway, job_id: str, printer: LogPrinter):
        super().__init__(daemon=True, name=f"logs-{job_id[:8]}")
        self.gateway, self.printer = gateway.clone(), printer
        self.source = LogSource(self.gateway, job_id)
        self.done = threading.Event()

    def run(self) -> None:
        self.drain(at_most=FIRST_LINES)  # what was logged before: its end only
        while not self.done.wait(LOG_POLL_S):
            self.drain()

    def drain(self, at_most: int | None = None) -> None:
        try:
            self.printer.print(self.source.read(), at_most=at_most)
        except (CliError, httpx.HTTPError):
            return  # the progress goes on; the next read tries again

    def stop(self, *, last_read: bool = False) -> None:
        self.done.set()
        self.join(LOG_POLL_S + 5)
        if last_read and not self.is_alive():
            self.drain()
        self.gateway.close()


def follow(gateway: Gateway, job_id: str, *, total_steps: int | None = None, console: Console | None = None,
           logs: bool = True) -> ExitCode:
    """Follow the job to its end: the exit code its end maps to, or DETACHED after Ctrl-C (the job goes on)."""
    console = console or out
    state = JobState(job_id, total=total_steps or None)
    view = BarView(console) if console.is_terminal else PlainView(console)
    printer = LogPrinter(view, job_id)
    pump = LogPump(gateway, job_id, printer) if logs else None
    try:
        with view:
            if pump:
                pump.start()
            _stream(gateway, state, view, printer)
            if pump:
                pump.stop(last_read=True)  # the lines logged at the end
                pump = None
    except KeyboardInterrupt:
        if pump:
            pump.done.set()  # a daemon thread: it ends with the process, however long its read takes
            pump = None
        err.print(f"\ndetached from job {job_id}; it goes on. Re-attach with: [bold]tunefleet jobs watch {job_id}[/] "
                  f"(stop it with: tunefleet jobs stop {job_id})", highlight=False, soft_wrap=True)
        return ExitCode.DETACHED
    finally:
        if pump:
            pump.stop()
    code = STATUS_EXIT[JobStatus(state.status)]
    style = "green" if code == ExitCode.OK else "red"
    console.print(f"job {job_id} ended [bold {style}]{state.status}[/]" + (
        f": {escape(state.reason)}" if state.reason and code != ExitCode.OK else "") +
        f" (cost {money(state.cost_so_far or 0.0)})", highlight=False, soft_wrap=True)
    return code


def _stream(gateway: Gateway, state: JobState, view, printer: LogPrinter) -> None:
    """Read the job's events until its final status, opening the stream again when it breaks off."""
    broken = 0
    path = f"/api/training/jobs/{state.job_id}/events"
    while True:
        try:
            with gateway.http.stream("GET", path, timeout=httpx.Timeout(30.0, read=90.0)) as response:
                if response.status_code != 200:
                    response.read()
                    raise api_error(response)
                for event, data in iter_events(response):
                    broken = 0
                    if event == "log":  # the lines the scheduler stored, live
                        printer.print([LogLine(line["text"], line.get("attempt"), line.get("number"))
                                       for line in data.get("lines") or []])
                        continue
                    note = state.apply(event, data)
                    if note:
                        view.line(note)
                    view.show(state)
                    if state.terminal:
                        return
        except httpx.TransportError:
            broken += 1
            if broken > MAX_RECONNECTS:
                raise
        # The stream ended before the job did (the gateway restarted ...): look, then listen again.
        state.apply("snapshot", gateway.get(f"/api/training/jobs/{state.job_id}"))
        view.show(state)
        if state.terminal:
            return
        time.sleep(min(2.0 ** broken, 10.0))
