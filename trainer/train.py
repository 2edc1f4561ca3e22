"""Run one job: SFT, DPO, ORPO or online RL with TRL on the JobSpec's data, streaming metrics, saving the adapter.

``run(spec)`` first refuses what cannot run (``trainer.validate.check_spec`` raises ConfigRefused before any
weights load), then trains and returns a TrainerResult with status "completed" or "interrupted" (``stop_event``
set, e.g. by SIGTERM: training stops after the current step and checkpoints). It raises on failure;
``python -m trainer`` turns every outcome into ``result.json``.

Resuming: ``spec.resume_from_checkpoint`` is a ``checkpoint-N`` folder (of this or an earlier attempt) or
"latest" (the newest checkpoint in ``spec.output_dir``; a fresh start when there is none). Training continues at
step N + 1 with the optimizer, scheduler, RNG and data order of the checkpoint, so metric steps follow on from
those the checkpointed run reported.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shared.config import Method
from shared.jobspec import JobSpec, TrainerResult
from trainer import artifacts
from trainer.reporter import MetricsReporter
from trainer.validate import check_spec

#: How long an interrupted run waits for its last checkpoint to be uploaded before it ends.
CHECKPOINT_UPLOAD_WAIT_S = 60.0


def _quiet_libraries() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()


def resume_checkpoint(spec: JobSpec) -> str | None:
    """The checkpoint folder to resume from, or None to start at step 0."""
    value = spec.resume_from_checkpoint
    if value in ("latest", "auto"):
        return artifacts.latest_checkpoint(spec.output_dir)
    return value or None


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def run(
    spec: JobSpec,
    *,
    reporter: MetricsReporter | None = None,
    stop_event: threading.Event | None = None,
    printer: Callable[[str], None] = print,
) -> TrainerResult:
    """Train ``spec`` and save its artifacts into ``spec.output_dir`` (see ``trainer.artifacts``).

    Without ``reporter`` one is made from the spec (spooling to ``{output_dir}/metrics-spool.jsonl``) and closed
    at the end. Raises ConfigRefused for a configuration that cannot run here.
    """
    check_spec(spec)
    os.makedirs(spec.output_dir, exist_ok=True)
    own_reporter = reporter is None
    if reporter is None:
        spool = os.path.join(spec.output_dir, artifacts.SPOOL)
        reporter = MetricsReporter(spec.ingest_url, spec.job_id, spec.ingest_token, spool, attempt=spec.attempt)
    try:
        return _run(spec, reporter, stop_event or threading.Event(), printer)
    finally:
        if own_reporter:
            reporter.close()


def _run(
    spec: JobSpec, reporter: MetricsReporter, stop_event: threading.Event, printer: Callable[[str], None]
) -> TrainerResult:
    import torch
    from transformers import PrinterCallback

    from trainer.attention import padding_free_attention
    from trainer.callbacks import MetricsCallback, PredictionCallback, RetentionCallback, StopCallback
    from trainer.checkpoint_upload import CheckpointUploadCallback, CheckpointUploader
    from trainer.data import prepare_data
    from trainer.methods import build_trainer, uses_padding_free
    from trainer.modeling import build_lora_config, load_model, load_tokenizer, model_dtype, use_cuda
    from trainer.progress import ProgressCallback, ProgressFile

    _quiet_libraries()
    cfg, t = spec.config, spec.config.training
    cuda = use_cuda(cfg)
    printer(f"[trainer] job {spec.job_id}: {t.method.value} on {cfg.model.base_model}")
    tokenizer = load_tokenizer(cfg)
    data = prepare_data(spec, tokenizer)
    printer(f"[trainer] data: {data.train_count} train rows, {data.eval_count} eval rows ({data.format.value})")
    if data.dropped:
        printer(f"[trainer] {data.dropped} rows dropped: their prompts leave no room for "
                f"training.rlhf.max_completion_length tokens within model.max_seq_length")
    attention = None
    if uses_padding_free(spec):
        attention = padding_free_attention(cuda=cuda, half_precision=model_dtype(cfg) != torch.float32)
        printer(f"[trainer] padding-free batches (attention: {attention})")
    model = load_model(cfg, attn_implementation=attention)
    peft_config = build_lora_config(t.lora, model) if t.lora.enabled else None
    target_modules = None
    if peft_config is not None:
        tm = peft_config.target_modules
        target_modules = tm if isinstance(tm, str) else sorted(tm)
        printer(f"[trainer] LoRA r={t.lora.r} alpha={t.lora.alpha} target_modules={target_modules}")

    progress = ProgressFile(spec.output_dir)
    metrics_cb = MetricsCallback(reporter, printer)
    stop_cb = StopCallback(stop_event)
    predictions_cb = PredictionCallback(reporter, tokenizer, data.samples, cfg.predictions, stop_event, printer,
                                        progress=progress)
    callbacks = [metrics_cb, stop_cb, predictions_cb, ProgressCallback(progress)]
    if t.keep_best_checkpoints:
        callbacks.append(RetentionCallback(keep_best=t.keep_best_checkpoints, printer=printer))
    uploader = None
    if spec.checkpoint_upload_url and is_main_process():
        uploader = CheckpointUploader(spec.checkpoint_upload_url, printer, reporter=reporter)
        callbacks.append(CheckpointUploadCallback(uploader, spec.output_dir))
    trainer = build_trainer(spec, model=model, tokenizer=tokenizer, data=data, peft_config=peft_config,
                            callbacks=callbacks, cuda=cuda, printer=printer)
    trainer.remove_callback(PrinterCallback)
    try:
        return _train(spec, _Run(trainer, tokenizer, data, peft_config, target_modules, attention, cuda, metrics_cb,
                                 stop_cb), stop_event, printer)
    finally:
        if uploader is not None:
            # A stopped or failing run may resume elsewhere: give its last checkpoint time to leave the machine.
            interrupted = stop_cb.stopped or stop_event.is_set()
            if not uploader.close(CHECKPOINT_UPLOAD_WAIT_S if interrupted else 0.0) and interrupted:
                printer("[trainer] the last checkpoint upload did not finish in time")


@dataclass(frozen=True)
class _Run:
    trainer: Any
    tokenizer: Any
    data: Any
    peft_config: Any
    target_modules: Any
    attention: str | None
    cuda: bool
    metrics_cb: Any
    stop_cb: Any


def _train(spec: JobSpec, run: _Run, stop_event: threading.Event, printer: Callable[[str], None]) -> TrainerResult:
    cfg, t = spec.config, spec.config.training
    trainer, tokenizer, data, peft_config = run.trainer, run.tokenizer, run.data, run.peft_config
    metrics_cb, stop_cb, cuda, attention = run.metrics_cb, run.stop_cb, run.cuda, run.attention

    def result(status: str, seconds: float, **paths) -> TrainerResult:
        return TrainerResult(
            status=status,
            output_dir=spec.output_dir,
            final_loss=metrics_cb.last_loss,
            final_eval_loss=metrics_cb.last_eval_loss,
            global_step=trainer.state.global_step,
            train_samples=data.train_count,
            eval_samples=data.eval_count,
            training_seconds=round(seconds, 3),
            checkpoint_path=artifacts.latest_checkpoint(spec.output_dir),
            **paths,
        )

    if stop_event.is_set():
        printer("[trainer] stop requested before training started")
        return result("interrupted", 0.0)
    resume = resume_checkpoint(spec)
    if resume:
        printer(f"[trainer] resuming from {resume}")
        from trainer.checkpoint_upload import replay_checkpoint_spool

        replay_checkpoint_spool(resume, spec.ingest_url, spec.job_id, spec.ingest_token)
    elif spec.resume_from_checkpoint:
        printer(f"[trainer] no checkpoint in {spec.output_dir} yet: starting at step 0")
    printer(f"[trainer] training on {'cuda' if cuda else 'cpu'}")
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.monotonic() - started
    if stop_cb.stopped:
        printer(f"[trainer] stopped at step {trainer.state.global_step} on request; checkpoint saved")
        return result("interrupted", seconds)
    if data.eval is not None and metrics_cb.last_eval_step != trainer.state.global_step and not stop_event.is_set():
        trainer.evaluate()
    if not trainer.is_world_process_zero():
        return result("completed", seconds)
    adapter_path = artifacts.save_model(trainer, tokenizer, spec.output_dir, lora=peft_config is not None)
    merged_path = None
    if t.merge_adapter:
        merged_path = artifacts.save_merged(cfg, adapter_path, spec.output_dir)
        printer(f"[trainer] merged model saved to {merged_path}")
    done = result("completed", seconds, adapter_path=adapter_path, merged_path=merged_path)
    metadata = artifacts.build_metadata(
        spec, done, target_modules=run.target_modules, summary=metrics_cb.summary, resumed_from=resume,
        attention=attention, padding_free=attention is not None,
        rlhf_reward=_reward_kind(spec) if t.method is Method.RLHF else None,
    )
    artifacts.write_metadata(spec.output_dir, metadata)
    printer(
        f"[trainer] completed: step={done.global_step} loss={done.final_loss} eval_loss={done.final_eval_loss} "
        f"saved to {adapter_path}"
    )
    return done


def _reward_kind(spec: JobSpec) -> str:
    r = spec.config.training.rlhf
    return f"reward_model:{r.reward_model}" if r.reward_model else f"judge:{r.judge_model}"
