"""Trainer callbacks: stream metrics, generate predictions, stop on request.

Metric records (one per logged step and kind; train and eval records may share a step):

* train: ``loss``, ``learning_rate``, ``grad_norm`` and TRL's extras (``entropy``, ``mean_token_accuracy``,
  ``num_tokens``), plus ``samples_per_second`` and ``tokens_per_second`` over the steps since the previous
  train record, ``tokens_seen`` (non-padding input tokens so far), memory and the system metrics of
  ``trainer.system`` (``system_cpu_percent``, ``system_ram_used_mb``, ``gpu_util_percent``, ``gpu_mem_used_mb``).
  DPO, ORPO and RLHF add their own TRL values (``rewards/chosen``, ``reward``, ``completions/mean_length``, ...).
* eval: every ``eval_*`` value the trainer logs (``eval_loss``, ``eval_runtime``, ...) plus memory, prefixed
  ``eval_`` too, so that no metric name appears twice at one step (ingest keys points by job, name, step).
* memory: ``memory_rss_mb`` (this process), and with CUDA ``gpu_memory_allocated_mb``/``gpu_memory_reserved_mb``.

With ``training.keep_best_checkpoints`` set, ``RetentionCallback`` decides which checkpoints stay on disk (the
trainer's own ``save_total_limit`` is then off).

The trainer's end-of-training summary log (``train_runtime``, ``train_loss``, ...) is not streamed; it is kept
in ``MetricsCallback.summary`` for ``metadata.json``. Non-finite values are dropped from records. With several
processes (``training.gpu_count`` > 1) only the main one reports and predicts.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable

import psutil
from transformers import TrainerCallback

from shared.config import PredictionsSection
from trainer.data import PredictionSample
from trainer.reporter import MetricsReporter
from trainer.scoring import score_prediction
from trainer.system import SystemMonitor

log = logging.getLogger(__name__)

_DROPPED_FROM_TRAIN = {"train_runtime", "train_tokens_per_second", "num_input_tokens_seen", "epoch"}


def memory_values() -> dict[str, float]:
    values = {"memory_rss_mb": psutil.Process().memory_info().rss / 2**20}
    import torch

    if torch.cuda.is_available():
        values["gpu_memory_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
        values["gpu_memory_reserved_mb"] = torch.cuda.memory_reserved() / 2**20
    return values


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class MetricsCallback(TrainerCallback):
    """Sends every train/eval log as one metrics record and prints a progress line to stdout."""

    def __init__(self, reporter: MetricsReporter, printer: Callable[[str], None] = print):
        self.reporter = reporter
        self.printer = printer
        self.summary: dict = {}
        self.last_loss: float | None = None
        self.last_eval_loss: float | None = None
        self.last_eval_step: int | None = None
        self._last_time: float | None = None
        self._last_step = 0
        self._last_tokens = 0
        self._system = SystemMonitor()

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.monotonic()
        self._last_step = state.global_step
        self._last_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        step, epoch = state.global_step, state.epoch
        is_eval = any(key.startswith("eval_") for key in logs)
        if is_eval:
            self.last_eval_step = step  # on every process: the trainer's final evaluation depends on it
        if not state.is_world_process_zero:
            return
        if "train_loss" in logs:
            self.summary = logs
            return
        if is_eval:
            values = {k: v for k, v in logs.items() if k.startswith("eval_")}
            values.update({f"eval_{k}": v for k, v in memory_values().items()})
            self.last_eval_loss = logs.get("eval_loss", self.last_eval_loss)
            kind = "eval"
        else:
            values = {k: v for k, v in logs.items() if k not in _DROPPED_FROM_TRAIN}
            values.update(self._rates(args, state))
            values.update(memory_values())
            values.update(self._system.values())
            self.last_loss = logs.get("loss", self.last_loss)
            kind = "train"
        self.reporter.log_metrics(step, epoch, values)
        shown = " ".join(
            f"{k}={_fmt(v)}"
            for k, v in values.items()
            if k in {"loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second"}
        )
        total = f"/{state.max_steps}" if state.max_steps and state.max_steps > 0 else ""
        epoch_text = f" epoch={epoch:.2f}" if epoch is not None else ""
        self.printer(f"[trainer] {kind} step={step}{total}{epoch_text} {shown}")

    def _rates(self, args, state) -> dict[str, float]:
        """Samples (and, where the trainer counts them, tokens) per second since the previous train record."""
        now = time.monotonic()
        tokens = state.num_input_tokens_seen
        counted = args.include_num_input_tokens_seen not in (False, None, "no")
        values: dict[str, float] = {"tokens_seen": float(tokens)} if counted else {}
        if self._last_time is not None:
            elapsed = now - self._last_time
            steps = state.global_step - self._last_step
            if elapsed > 0 and steps > 0:
                samples = steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
                values["samples_per_second"] = samples / elapsed
                if counted:
                    values["tokens_per_second"] = (tokens - self._last_tokens) / elapsed
        self._last_time, self._last_step, self._last_tokens = now, state.global_step, tokens
        return values


class PredictionCallback(TrainerCallback):
    """Generates for the held-out samples at the configured frequency and sends them as prediction records.

    Frequencies: "epoch" (each epoch end), "eval" (after each evaluation), "steps" (every ``step_interval``
    optimizer steps). When training ends normally and the last step has no predictions yet, one final set is
    generated. Each prediction carries BLEU and ROUGE-L against the expected text (``trainer.scoring``). A failing
    generation is logged and never stops training.
    """

    def __init__(
        self,
        reporter: MetricsReporter,
        tokenizer,
        samples: list[PredictionSample],
        config: PredictionsSection,
        stop_event: threading.Event | None = None,
        printer: Callable[[str], None] = print,
        progress=None,
    ):
        self.progress = progress
        self.reporter = reporter
        self.tokenizer = tokenizer
        self.samples = samples[: config.sample_count] if config.enabled else []
        self.config = config
        self.stop_event = stop_event
        self.printer = printer
        self.last_step: int | None = None

    def _stopping(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if self.config.frequency == "epoch":
            self.predict(model, state)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.config.frequency == "eval":
            self.predict(model, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        interval = self.config.step_interval
        if self.config.frequency == "steps" and interval and state.global_step % interval == 0:
            self.predict(model, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.predict(model, state)

    def predict(self, model, state) -> None:
        if not self.samples or model is None or self._stopping() or self.last_step == state.global_step:
            return
        if not state.is_world_process_zero:
            return
        self.last_step = state.global_step
        try:
            for index, sample in enumerate(self.samples):
                generated = generate(model, self.tokenizer, sample.prompt, self.config)
                if self.progress is not None:
                    self.progress.beat()
                self.reporter.log_prediction(
                    state.global_step, state.epoch, index, sample.prompt, generated, sample.expected,
                    score_prediction(generated, sample.expected),
                )
        except Exception as exc:
            log.exception("prediction generation failed")
            self.printer(f"[trainer] predictions at step {state.global_step} failed: {type(exc).__name__}: {exc}")
            return
        self.printer(f"[trainer] predictions step={state.global_step} samples={len(self.samples)}")


def generate(model, tokenizer, prompt: str, config: PredictionsSection) -> str:
    """Generate a continuation of ``prompt`` (greedy when temperature is 0); return only the new text."""
    import torch

    device = next(model.parameters()).device
    input_ids = tokenizer(prompt, return_tensors="pt").input_ids
    if input_ids.shape[1] == 0:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        input_ids = torch.tensor([[start]])
    input_ids = input_ids.to(device)
    kwargs: dict = {
        "max_new_tokens": config.max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "use_cache": True,
    }
    if config.temperature > 0:
        kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
            )
    finally:
        if was_training:
            model.train()
    return tokenizer.decode(output[0, input_ids.shape[1]:], skip_special_tokens=True)


def _on_any_process(flag: bool, args) -> bool:
    """``flag`` of any process of a multi-GPU run (so that all stop at the same step); ``flag`` alone otherwise."""
    if args.world_size <= 1:
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([int(flag)], device=args.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class StopCallback(TrainerCallback):
    """Stops training after the current optimizer step once ``stop_event`` is set (e.g. by SIGTERM).

    The stopping step is logged and checkpointed (so the job can resume); evaluation is skipped.
    """

    def __init__(self, stop_event: threading.Event):
        self.stop_event = stop_event
        self.stopped = False

    def on_step_end(self, args, state, control, **kwargs):
        if _on_any_process(self.stop_event.is_set(), args) and state.global_step < state.max_steps:
            self.stopped = True
            control.should_training_stop = True
            control.should_log = True
            control.should_save = True
            control.should_evaluate = False

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped:
            control.should_evaluate = False
            control.should_save = False


def checkpoints_to_delete(steps_with_eval: dict[int, float | None], keep_best: int) -> set[int]:
    """The checkpoint steps to delete so that the ``keep_best`` lowest eval losses and the newest step remain.

    A checkpoint without a (finite) eval loss ranks after every one with one; ties go to the newer step.
    """
    if not steps_with_eval:
        return set()

    def rank(step: int) -> tuple[bool, float, int]:
        loss = steps_with_eval[step]
        known = loss is not None and math.isfinite(loss)
        return (not known, loss if known else 0.0, -step)

    keep = set(sorted(steps_with_eval, key=rank)[:keep_best]) | {max(steps_with_eval)}
    return set(steps_with_eval) - keep


def eval_losses_by_step(log_history: list[dict]) -> dict[int, float]:
    """The eval loss logged at each step (the last one where a step was evaluated twice)."""
    return {entry["step"]: entry["eval_loss"] for entry in log_history if "eval_loss" in entry and "step" in entry}


class RetentionCallback(TrainerCallback):
    """After each save keeps the ``keep_best`` checkpoints with the lowest eval loss plus the newest; deletes the rest.

    Replaces the trainer's ``save_total_limit``, which keeps only the newest ones and so may drop the best model.
    """

    def __init__(self, keep_best: int, printer: Callable[[str], None] = print):
        self.keep_best = keep_best
        self.printer = printer

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folders = _checkpoint_folders(args.output_dir)
        losses = eval_losses_by_step(state.log_history)
        doomed = checkpoints_to_delete({step: losses.get(step) for step in folders}, self.keep_best)
        for step in sorted(doomed):
            shutil.rmtree(folders[step], ignore_errors=True)
        if doomed:
            kept = sorted(set(folders) - doomed)
            self.printer(f"[trainer] checkpoints kept at steps {kept}; deleted {sorted(doomed)}")


def _checkpoint_folders(output_dir: str) -> dict[int, str]:
    """``checkpoint-N`` folders of ``output_dir`` by N (the trainer's ``output_dir`` is the job's checkpoints/)."""
    try:
        names = os.listdir(output_dir)
    except FileNotFoundError:
        return {}
    folders = {}
    for name in names:
        step = name.removeprefix("checkpoint-")
        path = os.path.join(output_dir, name)
        if name.startswith("checkpoint-") and step.isdigit() and os.path.isdir(path):
            folders[int(step)] = path
    return folders
