"""How fast the dashboard opens a job that logged a million metric points, beside reading every row.

    python bench/dashboard_open.py              # about a minute on 2 cores

Starts embedded PostgreSQL and NATS and the gateway (uvicorn, as a subprocess), makes a user key and a job of
theirs (the gateway's record of an accepted deploy, which is what makes a job visible), and loads ``--points``
metric points for it with binary COPY, as ``metrics_ingest`` stores them: ``loss``, ``learning_rate`` and
``grad_norm`` at every step and ``eval_loss`` at every 100th, over three epochs, and the few points left over
as the final summary transformers' Trainer logs (``train_loss``, ``train_runtime`` ...) at the last step. The
table is then vacuumed and analysed, as autovacuum would have left it long before anyone opens a finished job.
Then, ``--repeats`` times each, median and p95:

1. dashboard read: ``GET /api/training/metrics/{job}?max_points=2000``, what the job page asks for first.
2. paged read, the baseline: every row through ``GET /api/training/metrics/{job}?limit=10000&offset=...``, all
   pages, what a page that draws every point would need. With ``--baseline-pages N`` only N pages at evenly spaced
   offsets are read (a page costs more the further in it starts) and the whole read is extrapolated from them;
   the output says so.
3. Chromium: ``/ui/#/jobs/<id>`` loaded in Debian's Chromium through Playwright, a fresh browser context (empty
   cache) each time, timed from navigation start (the page's ``performance.now()``) until the Loss chart's
   ``.plot`` has ``data-points > 0``; beside it, when the page's metrics request started and ended (Resource
   Timing, on the same clock) and the time as Playwright saw it (from ``goto`` to the chart). One untimed load
   first starts the browser's processes.

The last line is ``dashboard_open points=N read_ms=A read_kb=B paged_ms=C paged_mb=D ratio=E chromium_ms=F``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
from control_plane import percentile  # bench/control_plane.py
from harness import Processes, say, wait_http  # bench/harness.py
from ingest_vs_mlflow import curve  # bench/ingest_vs_mlflow.py
from rich.console import Console
from rich.table import Table

from services.cli.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from services.cli.stack import migrate_all
from services.gateway.users import create_api_key
from services.metrics_ingest.batch import Batch, Series
from services.metrics_ingest.pgcopy import COLUMNS, copy_data
from shared.db import create_pool

CHROMIUM = "/usr/bin/chromium"
DASHBOARD_POINTS = 2000  # MAX_POINTS in services/gateway/dashboard/static/js/pages/job.js
PAGE_ROWS = 10_000  # the most the paged route returns at once
EVAL_EVERY = 100
SUMMARY = ("train_loss", "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos")
EPOCHS = 3
USER = "bench"
CHART_TIMEOUT_MS = 120_000

#: True once the Loss chart holds points: then when (the page's clock, from navigation start) and what the page's
#: metrics request took (Resource Timing), else false, for Playwright to poll again.
CHART_DRAWN = """() => {
  const plot = document.querySelector('figure.chart[aria-label="Loss"] .plot');
  const points = plot ? Number(plot.dataset.points) : 0;
  if (!(points > 0)) return false;
  const read = performance.getEntriesByType("resource").find((e) => e.name.includes("/api/training/metrics/"));
  return { drawn: performance.now(), points, read_start: read ? read.startTime : null,
           read_end: read ? read.responseEnd : null };
}"""


@dataclass
class Timings:
    seconds: list[float] = field(default_factory=list)
    bytes: int = 0
    rows: int = 0
    note: str = ""


# -- the job ----------------------------------------------------------------------------------------------

def training_series(points: int, seed: int = 7) -> list[Series]:
    """Three metrics at every step and eval_loss at every EVAL_EVERY-th, as many steps as fit in ``points``, and the
    rest (at most four) as summary metrics at the last step: exactly ``points`` points, loss last."""
    steps = points * EVAL_EVERY // (3 * EVAL_EVERY + 1)
    rng = random.Random(seed)
    every = list(range(1, steps + 1))
    epochs = [EPOCHS * s / steps for s in every]
    warmup = max(1, steps // 20)
    lr = [3e-4 * (s / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (steps - warmup))))
          for s in every]
    grad = [abs(rng.gauss(1.0, 0.3)) + 0.1 for _ in every]
    evals = every[EVAL_EVERY - 1::EVAL_EVERY]
    eval_loss = [v + 0.05 for v in curve(len(evals), seed + 1)]
    left = points - 3 * steps - len(evals)
    summary = [Series(name, [steps], [rng.uniform(0.1, 1e4)], [float(EPOCHS)], None) for name in SUMMARY[:left]]
    return [*summary, Series("eval_loss", evals, eval_loss, epochs[EVAL_EVERY - 1::EVAL_EVERY], None),
            Series("grad_norm", every, grad, epochs, None),
            Series("learning_rate", every, lr, epochs, None),
            Series("loss", every, curve(steps, seed), epochs, None)]


async def load_job(pool, points: int) -> tuple[str, int, int]:
    """A job of USER's with its points COPYed in as metrics_ingest stores them; its id, points and steps.

    The job is the gateway's record of an accepted deploy (what ``views.ensure_job_visible`` looks for), with a
    configuration the job page can show: the page validates it as a ``TrainingConfig``."""
    series = training_series(points)
    steps = len(series[-1].steps)
    job = uuid.uuid4()
    config = {"name": f"bench-{points}-points", "model": {"base_model": "Qwen/Qwen2.5-0.5B"},
              "training": {"max_steps": steps, "epochs": EPOCHS}}
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO deploy_requests (job_id, user_id, provider, message) "
                           "VALUES ($1, $2, 'local', $3)", job, USER, {"config": config})
        await conn.execute("INSERT INTO metric_attempts (job_id, attempt, first_step) VALUES ($1, 1, 1)", job)
        for s in series:  # one metric a COPY keeps the buffer small
            data = copy_data(job, Batch(batch_id=s.name, default_time=datetime.now(UTC), series=[s]))
            await conn.copy_to_table("metric_points", source=memoryview(data), columns=COLUMNS, format="binary")
    async with pool.acquire() as conn:
        await conn.execute("VACUUM (ANALYZE) metric_points")
    stored = await pool.fetchval("SELECT count(*) FROM metric_points WHERE job_id = $1", job)
    if stored != points:
        raise RuntimeError(f"stored {stored:,} points of {points:,}")
    return str(job), stored, steps


# -- the reads ----------------------------------------------------------------------------------------------

async def dashboard_read(client: httpx.AsyncClient, job_id: str, repeats: int, stored: int) -> Timings:
    out = Timings()
    for _ in range(repeats):
        started = time.perf_counter()
        r = await client.get(f"/api/training/metrics/{job_id}", params={"max_points": DASHBOARD_POINTS})
        r.raise_for_status()
        out.seconds.append(time.perf_counter() - started)
        out.bytes = r.num_bytes_downloaded
    body = r.json()
    raw = sum(s["raw_points"] for s in body["downsampling"]["series"])
    if raw != stored:
        raise RuntimeError(f"the downsampled read counted {raw:,} points of {stored:,}")
    out.rows = len(body["metrics"])
    out.note = (f"{sum(s['points'] for s in body['downsampling']['series']):,} points of "
                f"{len(body['downsampling']['series'])} metrics in {out.rows:,} rows")
    return out


async def page(client: httpx.AsyncClient, job_id: str, offset: int) -> tuple[float, int, int, int]:
    started = time.perf_counter()
    r = await client.get(f"/api/training/metrics/{job_id}", params={"limit": PAGE_ROWS, "offset": offset})
    r.raise_for_status()
    elapsed = time.perf_counter() - started
    body = r.json()
    return elapsed, r.num_bytes_downloaded, len(body["metrics"]), body["total_count"]


async def paged_read(client: httpx.AsyncClient, job_id: str, repeats: int, steps: int, sample: int) -> Timings:
    """Every page, or ``sample`` pages at evenly spaced offsets scaled up to all of them."""
    pages = math.ceil(steps / PAGE_ROWS)
    if sample and sample < pages:
        offsets = sorted({round(i * (pages - 1) / max(1, sample - 1)) * PAGE_ROWS for i in range(sample)})
    else:
        offsets = [i * PAGE_ROWS for i in range(pages)]
    scale = pages / len(offsets)
    out = Timings()
    for _ in range(repeats):
        took, size, rows = 0.0, 0, 0
        for offset in offsets:
            elapsed, n_bytes, n_rows, total = await page(client, job_id, offset)
            if total != steps:
                raise RuntimeError(f"the paged read counted {total:,} steps of {steps:,}")
            took, size, rows = took + elapsed, size + n_bytes, rows + n_rows
        out.seconds.append(took * scale)
        out.bytes, out.rows = round(size * steps / rows), steps
    if scale == 1 and rows != steps:
        raise RuntimeError(f"the pages held {rows:,} rows of {steps:,}")
    out.note = (f"all {pages} pages" if scale == 1 else
                f"EXTRAPOLATED: {len(offsets)} of {pages} pages read (evenly spaced), time x{scale:.1f} (mean page "
                f"time x {pages} pages), bytes scaled to {steps:,} rows")
    return out


def chromium_opens(gateway: str, job_id: str, key: str, loads: int, logs: Path) -> dict[str, Timings]:
    """Page loads in fresh contexts; Playwright's sync API, so this runs in a thread of its own. A load whose chart
    never appears leaves the page's HTML and console in ``logs``."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    drawn, read_start, read_end, wall = Timings(), Timings(), Timings(), Timings()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        drawn.note = f"Chromium {browser.version}, {loads} loads after an untimed one, a fresh context each"
        try:
            for n in range(loads + 1):
                context = browser.new_context()
                context.add_init_script(f"sessionStorage.setItem('tunefleet.key', {json.dumps(key)})")
                tab = context.new_page()
                console: list[str] = []
                tab.on("console", lambda msg, console=console: console.append(f"{msg.type}: {msg.text}"))
                tab.on("pageerror", lambda exc, console=console: console.append(f"pageerror: {exc}"))
                started = time.perf_counter()
                tab.goto(f"{gateway}/ui/#/jobs/{job_id}", wait_until="commit")
                try:
                    seen = tab.wait_for_function(CHART_DRAWN, timeout=CHART_TIMEOUT_MS).json_value()
                except PlaywrightError as exc:
                    (logs / "chromium-page.html").write_text(tab.content())
                    (logs / "chromium-console.log").write_text("\n".join(console))
                    raise RuntimeError(f"no Loss chart after {CHART_TIMEOUT_MS / 1000:.0f} s (page and console in "
                                       f"{logs}); console: {console[-5:]}") from exc
                elapsed = time.perf_counter() - started
                context.close()
                if n == 0:
                    continue  # starts the renderer and GPU processes; untimed
                drawn.seconds.append(seen["drawn"] / 1000)
                drawn.rows = seen["points"]
                if seen["read_end"] is not None:
                    read_start.seconds.append(seen["read_start"] / 1000)
                    read_end.seconds.append(seen["read_end"] / 1000)
                wall.seconds.append(elapsed)
        finally:
            browser.close()
    return {"drawn": drawn, "read_start": read_start, "read_end": read_end, "wall": wall}


# -- report -----------------------------------------------------------------------------------------------

def ms(seconds: list[float], q: float | None = None) -> str:
    if not seconds:
        return "-"
    value = statistics.median(seconds) if q is None else percentile(seconds, q)
    return f"{value * 1000:,.0f}" if value >= 1 else f"{value * 1000:,.1f}"


def report(stored: int, steps: int, read: Timings, paged: Timings, browser: dict[str, Timings]) -> str:
    table = Table(title=f"Opening a job of {stored:,} metric points ({steps:,} steps)")
    for column in ("what", "n", "median ms", "p95 ms", "bytes", "rows"):
        table.add_column(column, justify="left" if column == "what" else "right")

    def row(what: str, t: Timings, with_size: bool = True) -> None:
        table.add_row(what, str(len(t.seconds)), ms(t.seconds), ms(t.seconds, 95),
                      f"{t.bytes:,}" if with_size else "", f"{t.rows:,}" if t.rows else "")

    row(f"(a) dashboard read, max_points={DASHBOARD_POINTS}", read)
    extrapolated = "EXTRAPOLATED" in paged.note
    row(f"(b) baseline: paged read, limit={PAGE_ROWS}, " + ("extrapolated" if extrapolated else "all pages"), paged)
    row("(c) Chromium: navigation -> Loss chart drawn", browser["drawn"], with_size=False)
    row("    its metrics request started", browser["read_start"], with_size=False)
    row("    its metrics response ended", browser["read_end"], with_size=False)
    row("    Playwright goto -> chart seen", browser["wall"], with_size=False)
    console = Console(width=None if sys.stdout.isatty() else 120)
    console.print(table)
    console.print(f"(a) {read.note}; (b) {paged.note}; (c) {browser['drawn'].note}, rows = the chart's data-points")
    read_s, paged_s = statistics.median(read.seconds), statistics.median(paged.seconds)
    return (f"dashboard_open points={stored} read_ms={read_s * 1000:.1f} read_kb={read.bytes / 1e3:.1f} "
            f"paged_ms={paged_s * 1000:.0f} paged_mb={paged.bytes / 1e6:.1f} ratio={paged_s / read_s:.0f} "
            f"chromium_ms={statistics.median(browser['drawn'].seconds) * 1000:.0f}"
            + (" (paged extrapolated)" if extrapolated else ""))


# -- main -------------------------------------------------------------------------------------------------

async def run(args) -> str:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tunefleet-bench-open-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    say(f"work folder {work}; {os.cpu_count()} CPUs; {args.points:,} points, {args.repeats} repeats")
    postgres = EmbeddedPostgres(work / "postgres").start()
    nats_server = EmbeddedNats(work / "nats", port=free_port()).start()
    procs = Processes(work / "logs")
    try:
        await migrate_all(postgres.url)
        pool = await create_pool(postgres.url)
        key = await create_api_key(pool, USER)
        started = time.perf_counter()
        job_id, stored, steps = await load_job(pool, args.points)
        say(f"job {job_id}: {stored:,} points over {steps:,} steps COPYed, vacuumed and analysed in "
            f"{time.perf_counter() - started:.1f} s")
        await pool.close()

        port = free_port()
        env = {**os.environ, "TUNEFLEET_HOME": str(work / "home"), "TUNEFLEET_DATABASE_URL": postgres.url,
               "TUNEFLEET_NATS_URL": nats_server.url, "TUNEFLEET_SECRET_KEY": secrets.token_urlsafe(32),
               "TUNEFLEET_LOG_LEVEL": "WARNING", "TUNEFLEET_GATEWAY_PORT": str(port)}
        procs.start("gateway", [sys.executable, "-m", "services.gateway"], env)
        gateway = f"http://127.0.0.1:{port}"
        await wait_http(procs, f"{gateway}/healthz", ok=lambda r: r.status_code in (200, 503))
        say("gateway up")

        async with httpx.AsyncClient(base_url=gateway, timeout=120,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            await dashboard_read(client, job_id, 1, stored)  # untimed: the gateway's first connections
            read = await dashboard_read(client, job_id, args.repeats, stored)
            say(f"dashboard read: median {ms(read.seconds)} ms, {read.bytes:,} bytes")
            paged = await paged_read(client, job_id, args.baseline_repeats or args.repeats, steps,
                                     args.baseline_pages)
            say(f"paged read: median {ms(paged.seconds)} ms, {paged.bytes:,} bytes ({paged.note})")
        browser = await asyncio.to_thread(chromium_opens, gateway, job_id, key,
                                         args.loads or args.repeats, work / "logs")
        say(f"chromium: median {ms(browser['drawn'].seconds)} ms to the Loss chart")
        procs.check()
    finally:
        procs.stop()
        nats_server.stop()
        postgres.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return report(stored, steps, read, paged, browser)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="metric points of the job (default 1000000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of each read (default 5)")
    parser.add_argument("--baseline-repeats", type=int, default=3,
                        help="repetitions of the paged read (default 3; 0: --repeats)")
    parser.add_argument("--baseline-pages", type=int, default=0,
                        help="read only this many pages of the baseline and extrapolate (default 0: all pages)")
    parser.add_argument("--loads", type=int, default=0, help="timed Chromium page loads (default 0: --repeats)")
    parser.add_argument("--workdir", help="keep everything in this folder instead of a temporary one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) afterwards")
    args = parser.parse_args()
    print(asyncio.run(run(args)), flush=True)


if __name__ == "__main__":
    main()
