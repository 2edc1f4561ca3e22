"""``python -m trainer --spec FILE``: run one JobSpec and always leave ``{output_dir}/result.json``.

Exit codes: 0 completed, 1 failed (result.json has error_type, error_message, traceback; a refused configuration
has error_type "ConfigRefused" and the field in error_field; out of memory has error_type "OutOfMemoryError" and a
message listing the knobs to turn), 143 interrupted (SIGTERM or SIGINT: training stops after the current step,
saves a checkpoint). result.json's checkpoint_path is the latest checkpoint, whatever the outcome. Progress lines
go to stdout, prefixed ``[trainer]``. Metrics go to ``spec.ingest_url`` through MetricsReporter, spooling to
``{output_dir}/metrics-spool.jsonl``. Neither the ingest token nor the judge's API key is ever printed or written.

With ``training.gpu_count`` > 1 the command re-executes itself under ``accelerate launch`` (``trainer.launch``);
process 0 of the launched children reports and writes result.json.
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


def _hide(text: str, secrets: tuple[str | None, ...]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _printer(*secrets: str | None):
    def emit(line: str) -> None:
        print(_hide(line, secrets), flush=True)

    return emit


def _secrets(spec: JobSpec) -> tuple[str | None, ...]:
    """The ingest token and the judge's API key: never printed, never in result.json."""
    key_env = spec.config.training.rlhf.judge_key_env()
    return spec.ingest_token, os.environ.get(key_env) if key_env else None


def _silent(_line: str) -> None:
    """The printer of processes other than the main one of a multi-GPU launch."""


def _redact(result: TrainerResult, *secrets: str | None) -> TrainerResult:
    fields = {k: getattr(result, k) for k in ("error_message", "traceback")}
    return result.model_copy(update={k: _hide(v, secrets) for k, v in fields.items() if v})


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
    _install_signal_handlers(stop_event, _printer())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        spec = JobSpec.read(args.spec)
    except Exception as exc:
        print(f"[trainer] cannot read the job spec {args.spec}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_CODES["failed"]

    from trainer import artifacts
    from trainer.errors import describe_failure
    from trainer.launch import is_launched_child
    from trainer.reporter import MetricsReporter
    from trainer.train import is_main_process

    emit = _printer(*_secrets(spec))
    _install_signal_handlers(stop_event, emit)
    os.makedirs(spec.output_dir, exist_ok=True)
    if spec.config.training.gpu_count > 1 and not is_launched_child():
        return _launch(spec, args.spec, emit)
    if not is_main_process():
        emit = _silent
        spec = spec.model_copy(update={"ingest_url": None})
    emit(f"[trainer] job {spec.job_id} attempt {spec.attempt}: output in {spec.output_dir}")
    spool = artifacts.SPOOL if is_main_process() else f"{artifacts.SPOOL}.rank{os.environ.get('RANK')}"
    reporter = MetricsReporter(spec.ingest_url, spec.job_id, spec.ingest_token, os.path.join(spec.output_dir, spool),
                               attempt=spec.attempt)
    try:
        from trainer.train import run

        result = run(spec, reporter=reporter, stop_event=stop_event, printer=emit)
    except BaseException as exc:
        error_type, message, field = describe_failure(exc)
        result = TrainerResult(
            status="failed",
            error_type=error_type,
            error_message=message,
            error_field=field,
            traceback=traceback.format_exc(),
            output_dir=spec.output_dir,
            checkpoint_path=artifacts.latest_checkpoint(spec.output_dir),
        )
        emit(f"[trainer] failed: {error_type}: {message}")
    result = _redact(result, *_secrets(spec))
    try:
        if is_main_process():
            artifacts.write_result(spec.output_dir, result)
    finally:
        interrupted = result.status == "interrupted" or stop_event.is_set()
        reporter.close(REPORTER_CLOSE_TIMEOUT_INTERRUPTED_S if interrupted else REPORTER_CLOSE_TIMEOUT_S)
    left = reporter.spooled
    spool_note = f"; {left} metric batches left in {reporter.spool_path}" if left else ""
    emit(f"[trainer] status={result.status} global_step={result.global_step}{spool_note}")
    return EXIT_CODES.get(result.status, 1)


def _launch(spec: JobSpec, spec_path: str, emit) -> int:
    """Refuse early what cannot run, then run the job as ``gpu_count`` processes; always leave result.json."""
    from trainer import artifacts
    from trainer.errors import describe_failure
    from trainer.launch import build_launch_command, mixed_precision, run_launched
    from trainer.validate import check_spec

    gpus = spec.config.training.gpu_count
    try:
        check_spec(spec)
    except Exception as exc:
        error_type, message, field = describe_failure(exc)
        emit(f"[trainer] failed: {error_type}: {message}")
        artifacts.write_result(spec.output_dir, _redact(TrainerResult(
            status="failed", error_type=error_type, error_message=message, error_field=field,
            traceback=traceback.format_exc(), output_dir=spec.output_dir,
        ), *_secrets(spec)))
        return EXIT_CODES["failed"]
    result_path = os.path.join(spec.output_dir, artifacts.RESULT)
    if os.path.exists(result_path):
        os.remove(result_path)
    emit(f"[trainer] launching {gpus} processes (one per GPU) through accelerate")
    code = run_launched(build_launch_command(spec_path, gpus, mixed_precision=mixed_precision(spec.config)))
    if not os.path.exists(result_path):
        artifacts.write_result(spec.output_dir, TrainerResult(
            status="failed", error_type="LaunchFailed", output_dir=spec.output_dir,
            error_message=f"accelerate launch of {gpus} processes exited with code {code} without a result: "
                          "see the log above; try training.gpu_count=1 to rule the multi-GPU setup out",
            checkpoint_path=artifacts.latest_checkpoint(spec.output_dir),
        ))
        return EXIT_CODES["failed"]
    return code


if __name__ == "__main__":
    sys.exit(main())
