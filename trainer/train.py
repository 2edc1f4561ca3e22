"""Run one job: LoRA SFT with TRL on the JobSpec's data, streaming metrics, saving the adapter.

``run(spec)`` returns a TrainerResult with status "completed" or "interrupted" (``stop_event`` set, e.g. by
SIGTERM: training stops after the current step and checkpoints) and raises on failure; ``python -m trainer``
turns every outcome into ``result.json``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from shared.config import METHOD_FORMATS, DataFormat, Method
from shared.jobspec import JobSpec, TrainerResult
from trainer import artifacts
from trainer.reporter import MetricsReporter


def _quiet_libraries() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_warning()
    transformers.utils.logging.disable_progress_bar()


def check_method(spec: JobSpec) -> None:
    """Raise when the method is not implemented or cannot train on the data set's format."""
    method = spec.config.training.method
    if method is not Method.SFT:
        raise NotImplementedError(
            f"training.method={method.value!r} is not implemented by this trainer yet; use training.method='sft'"
        )
    fmt = DataFormat(spec.dataset_format)
    if fmt not in METHOD_FORMATS[method]:
        allowed = ", ".join(sorted(f.value for f in METHOD_FORMATS[method]))
        raise ValueError(f"training.method={method.value!r} cannot train on {fmt.value!r} data (use {allowed})")


def build_sft_config(spec: JobSpec, *, has_eval: bool, cuda: bool, printer: Callable[[str], None] = print):
    """Map the TrainingConfig onto TRL's SFTConfig."""
    from trl import SFTConfig

    t = spec.config.training
    optim = t.optimizer
    if optim.startswith("paged_") and not cuda:
        printer(f"[trainer] training.optimizer={optim!r} needs CUDA; using 'adamw_torch' on CPU")
        optim = "adamw_torch"
    kwargs: dict = {}
    if has_eval and t.eval_steps:
        kwargs.update(eval_strategy="steps", eval_steps=t.eval_steps)
    else:
        kwargs["eval_strategy"] = "epoch" if has_eval else "no"
    if t.save_steps:
        kwargs.update(save_strategy="steps", save_steps=t.save_steps)
    else:
        kwargs["save_strategy"] = "epoch"
    return SFTConfig(
        output_dir=os.path.join(spec.output_dir, artifacts.CHECKPOINTS_DIR),
        run_name=spec.job_id,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps if t.warmup_steps > 0 else t.warmup_ratio,
        weight_decay=t.weight_decay,
        optim=optim,
        max_grad_norm=t.max_grad_norm,
        activation_checkpointing=t.gradient_checkpointing,
        bf16=t.bf16,
        fp16=t.fp16,
        seed=t.seed,
        data_seed=t.seed,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_total_limit=2,
        max_length=spec.config.model.max_seq_length,
        report_to="none",
        use_cpu=not cuda,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        **kwargs,
    )


def _resume_arg(spec: JobSpec) -> str | bool | None:
    value = spec.resume_from_checkpoint
    if value in ("latest", "auto"):
        folder = os.path.join(spec.output_dir, artifacts.CHECKPOINTS_DIR)
        return True if os.path.isdir(folder) and any(n.startswith("checkpoint-") for n in os.listdir(folder)) else None
    return value or None


def run(
    spec: JobSpec,
    *,
    reporter: MetricsReporter | None = None,
    stop_event: threading.Event | None = None,
    printer: Callable[[str], None] = print,
) -> TrainerResult:
    """Train ``spec`` and save its artifacts into ``spec.output_dir`` (see ``trainer.artifacts``).

    Without ``reporter`` one is made from the spec (spooling to ``{output_dir}/metrics-spool.jsonl``) and closed
    at the end. Raises NotImplementedError for methods other than "sft".
    """
    check_method(spec)
    os.makedirs(spec.output_dir, exist_ok=True)
    own_reporter = reporter is None
    if reporter is None:
        spool = os.path.join(spec.output_dir, artifacts.SPOOL)
        reporter = MetricsReporter(spec.ingest_url, spec.job_id, spec.ingest_token, spool)
    try:
        return _run(spec, reporter, stop_event or threading.Event(), printer)
    finally:
        if own_reporter:
            reporter.close()


def _run(
    spec: JobSpec, reporter: MetricsReporter, stop_event: threading.Event, printer: Callable[[str], None]
) -> TrainerResult:
    from transformers import PrinterCallback
    from trl import SFTTrainer

    from trainer.callbacks import MetricsCallback, PredictionCallback, StopCallback
    from trainer.data import prepare_sft_data
    from trainer.modeling import build_lora_config, cuda_available, load_model, load_tokenizer

    _quiet_libraries()
    cfg, t = spec.config, spec.config.training
    printer(f"[trainer] job {spec.job_id}: loading {cfg.model.base_model}")
    tokenizer = load_tokenizer(cfg)
    data = prepare_sft_data(spec, tokenizer)
    printer(f"[trainer] data: {data.train_count} train rows, {data.eval_count} eval rows ({data.format.value})")
    model = load_model(cfg)
    peft_config = build_lora_config(t.lora, model) if t.lora.enabled else None
    target_modules = None
    if peft_config is not None:
        tm = peft_config.target_modules
        target_modules = tm if isinstance(tm, str) else sorted(tm)
        printer(f"[trainer] LoRA r={t.lora.r} alpha={t.lora.alpha} target_modules={target_modules}")
    cuda = cuda_available()
    args = build_sft_config(spec, has_eval=data.eval is not None, cuda=cuda, printer=printer)

    metrics_cb = MetricsCallback(reporter, printer)
    stop_cb = StopCallback(stop_event)
    predictions_cb = PredictionCallback(reporter, tokenizer, data.samples, cfg.predictions, stop_event, printer)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[metrics_cb, stop_cb, predictions_cb],
    )
    trainer.remove_callback(PrinterCallback)

    def result(status: str, seconds: float, adapter_path: str | None = None) -> TrainerResult:
        return TrainerResult(
            status=status,
            adapter_path=adapter_path,
            output_dir=spec.output_dir,
            final_loss=metrics_cb.last_loss,
            final_eval_loss=metrics_cb.last_eval_loss,
            global_step=trainer.state.global_step,
            train_samples=data.train_count,
            eval_samples=data.eval_count,
            training_seconds=round(seconds, 3),
        )

    if stop_event.is_set():
        printer("[trainer] stop requested before training started")
        return result("interrupted", 0.0)
    printer(f"[trainer] training on {'cuda' if cuda else 'cpu'}")
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=_resume_arg(spec))
    seconds = time.monotonic() - started
    if stop_cb.stopped:
        printer(f"[trainer] stopped at step {trainer.state.global_step} on request; checkpoint saved")
        return result("interrupted", seconds)
    if data.eval is not None and metrics_cb.last_eval_step != trainer.state.global_step and not stop_event.is_set():
        trainer.evaluate()
    adapter_path = artifacts.save_model(trainer, tokenizer, spec.output_dir, lora=peft_config is not None)
    done = result("completed", seconds, adapter_path)
    metadata = artifacts.build_metadata(spec, done, target_modules=target_modules, summary=metrics_cb.summary)
    artifacts.write_metadata(spec.output_dir, metadata)
    printer(
        f"[trainer] completed: step={done.global_step} loss={done.final_loss} eval_loss={done.final_eval_loss} "
        f"saved to {adapter_path}"
    )
    return done
