"""training.keep_best_checkpoints: the best checkpoints by eval loss and the newest stay, the others go."""

from __future__ import annotations

import json
import math
import os

import pytest

from trainer.callbacks import checkpoints_to_delete
from trainer.methods import training_arguments
from trainer.train import run


def test_keeps_the_lowest_eval_losses_and_the_newest():
    losses = {1: 2.0, 2: 1.5, 3: 1.7, 4: 1.2, 5: 1.9}
    assert checkpoints_to_delete(losses, keep_best=1) == {1, 2, 3}
    assert checkpoints_to_delete(losses, keep_best=2) == {1, 3}
    assert checkpoints_to_delete(losses, keep_best=10) == set()


def test_the_newest_stays_even_when_it_is_the_worst():
    assert checkpoints_to_delete({10: 0.5, 20: 0.7, 30: 9.0}, keep_best=1) == {20}
    # The newest is also the best: one checkpoint is enough.
    assert checkpoints_to_delete({10: 0.9, 20: 0.7, 30: 0.1}, keep_best=1) == {10, 20}


def test_checkpoints_without_eval_loss_rank_last():
    losses: dict[int, float | None] = {1: None, 2: 3.0, 3: None, 4: math.nan, 5: None}
    assert checkpoints_to_delete(losses, keep_best=1) == {1, 3, 4}
    # Among those without one the newer is kept first.
    assert checkpoints_to_delete({1: None, 2: None, 3: None, 4: None}, keep_best=2) == {1, 2}


def test_ties_keep_the_newer_checkpoint():
    assert checkpoints_to_delete({1: 1.0, 2: 1.0, 3: 2.0}, keep_best=1) == {1}


def test_nothing_to_delete_without_checkpoints():
    assert checkpoints_to_delete({}, keep_best=1) == set()


def test_the_trainer_limit_is_off_only_with_keep_best(make_spec):
    assert training_arguments(make_spec(), has_eval=True, cuda=False)["save_total_limit"] == 2
    spec = make_spec(training={"keep_best_checkpoints": 3})
    assert training_arguments(spec, has_eval=True, cuda=False)["save_total_limit"] is None


@pytest.mark.timeout(120)
def test_a_short_run_leaves_the_best_and_the_last_checkpoint(make_spec):
    # At this learning rate the tiny model's eval loss goes up and down, so the best step is not the last one.
    steps = 3
    training = {"max_steps": steps, "batch_size": 4, "learning_rate": 0.3, "save_steps": 1, "eval_steps": 1,
                "keep_best_checkpoints": 1}
    spec = make_spec(rows=40, training=training, predictions={"enabled": False})
    printed: list[str] = []
    result = run(spec, printer=printed.append)
    assert result.status == "completed" and result.global_step == steps

    folder = os.path.join(spec.output_dir, "checkpoints")
    with open(os.path.join(folder, f"checkpoint-{steps}", "trainer_state.json"), encoding="utf-8") as f:
        history = json.load(f)["log_history"]
    evals = {entry["step"]: entry["eval_loss"] for entry in history if "eval_loss" in entry}
    assert sorted(evals) == list(range(1, steps + 1))
    best = min(evals, key=lambda step: (evals[step], -step))
    left = sorted(name for name in os.listdir(folder) if name.startswith("checkpoint-"))
    assert left == sorted({f"checkpoint-{best}", f"checkpoint-{steps}"})
    assert result.checkpoint_path == os.path.join(folder, f"checkpoint-{steps}")
    assert any(line.startswith("[trainer] checkpoints kept at steps") for line in printed)
