"""``python -m trainer --spec FILE``: run one JobSpec and always leave ``{output_dir}/result.json``.

Exit codes: 0 completed, 1 failed (result.json has error_type, error_message, traceback), 143 interrupted
(SIGTERM or SIGINT: training stops after the current step, saves a checkpoint). Progress lines go to stdout,
prefixed ``[trainer]``. Metrics go to ``spec.ingest_url`` through MetricsReporter, spooling to
``{output_dir}/metrics-spool.jsonl``. The ingest token is never printed.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback

from shared.jobspec import JobSpec, TrainerResult

EXIT_CODES = {"completed": 0, "failed": 1, "interrupted": 143}
REPORTER_CLOSE_TIMEOUT_S = 30.0
REPORTER_CLOSE_TIMEOUT_INTERRUPTED_S = 5.0


def _printer(secret: str | None):
    def emit(line: str) -> None:
        print(line.replace(secret, "***") if secret else line, flush=True)

    return emit


def _redact(result: TrainerResult, secret: str | None) -> TrainerResult:
    if not secret:
        return result
    fields = {k: getattr(result, k) for k in ("error_message", "traceback")}
    return result.model_copy(update={k: v.replace(secret, "***") for k, v in fields.items() if v})


def _install_signal_handlers(stop_event: threading.Event, emit) -> None:
    def handle(signum, _frame):
        if not stop_event.is_set():
            emit(f"[trainer] received {signal.Signals(signum).name}: stopping after the current step")
        stop_event.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="Run one TuneFleet training job.")
    parser.add_argument("--spec", required=True, help="path of the JobSpec JSON file")
    args = parser.parse_args(argv)

    stop_event = threading.Event()
    _install_signal_handlers(stop_event, _printer(None))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        spec = JobSpec.read(args.spec)
    except Exception as exc:
        print(f"[trainer] cannot read the job spec {args.spec}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_CODES["failed"]

    from trainer import artifacts
    from trainer.reporter import MetricsReporter

    emit = _printer(spec.ingest_token)
    _install_signal_handlers(stop_event, emit)
    os.makedirs(spec.output_dir, exist_ok=True)
    emit(f"[trainer] job {spec.job_id} attempt {spec.attempt}: output in {spec.output_dir}")
    reporter = MetricsReporter(
        spec.ingest_url, spec.job_id, spec.ingest_token, os.path.join(spec.output_dir, artifacts.SPOOL)
    )
    try:
        from trainer.train import run

        result = run(spec, reporter=reporter, stop_event=stop_event, printer=emit)
    except BaseException as exc:
        result = TrainerResult(
            status="failed",
            error_type=type(exc).__name__,
            error_message=str(exc),
            traceback=traceback.format_exc(),
            output_dir=spec.output_dir,
        )
        emit(f"[trainer] failed: {type(exc).__name__}: {exc}")
    result = _redact(result, spec.ingest_token)
    try:
        artifacts.write_result(spec.output_dir, result)
    finally:
        interrupted = result.status == "interrupted" or stop_event.is_set()
        reporter.close(REPORTER_CLOSE_TIMEOUT_INTERRUPTED_S if interrupted else REPORTER_CLOSE_TIMEOUT_S)
    left = reporter.spooled
    spool_note = f"; {left} metric batches left in {reporter.spool_path}" if left else ""
    emit(f"[trainer] status={result.status} global_step={result.global_step}{spool_note}")
    return EXIT_CODES.get(result.status, 1)


if __name__ == "__main__":
    sys.exit(main())
