"""``{output_dir}/progress.json``: where training is, for whoever watches the machine.

Written atomically at most every ``interval_s`` seconds, and always when the phase changes::

    {"phase": "training", "step": 120, "max_steps": 400, "epoch": 0.6, "beats": 131,
     "updated_at": "2026-12-01T10:00:00+00:00"}

``beats`` counts units of work (optimizer steps, evaluation batches, generated predictions): a provider that sees
it stop growing while ``phase`` is "training" knows the run has stalled. ``phase`` is "training" from the first
step on and "finishing" once training has ended (saving, merging, uploading can take long without steps).
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import UTC, datetime

from transformers import TrainerCallback

FILENAME = "progress.json"


class ProgressFile:
    def __init__(self, output_dir: str, interval_s: float = 5.0):
        self.path = os.path.join(output_dir, FILENAME)
        self.interval_s = interval_s
        self.phase = "starting"
        self.step = 0
        self.max_steps: int | None = None
        self.epoch: float | None = None
        self.beats = 0
        self._written_at = 0.0
        self._lock = threading.Lock()

    def beat(self, *, phase: str | None = None, step: int | None = None, epoch: float | None = None,
             max_steps: int | None = None) -> None:
        with self._lock:
            self.beats += 1
            changed = phase is not None and phase != self.phase
            self.phase = phase or self.phase
            self.step = self.step if step is None else step
            self.epoch = self.epoch if epoch is None else epoch
            self.max_steps = self.max_steps if max_steps is None else max_steps
            if changed or time.monotonic() - self._written_at >= self.interval_s:
                self._write()

    def _write(self) -> None:
        self._written_at = time.monotonic()
        body = {"phase": self.phase, "step": self.step, "max_steps": self.max_steps, "epoch": self.epoch,
                "beats": self.beats, "updated_at": datetime.now(UTC).isoformat()}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(body, f)
        os.replace(tmp, self.path)


class ProgressCallback(TrainerCallback):
    """Beats on every optimizer step and evaluation batch (main process only)."""

    def __init__(self, progress: ProgressFile):
        self.progress = progress

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress.beat(phase="training", step=state.global_step, max_steps=state.max_steps)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress.beat(step=state.global_step, epoch=state.epoch)

    def on_prediction_step(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress.beat()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.progress.beat(phase="finishing", step=state.global_step)
