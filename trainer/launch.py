"""Data-parallel training on several GPUs of one machine (``training.gpu_count`` > 1).

``python -m trainer --spec FILE`` re-executes itself under ``accelerate launch`` with one process per GPU; the
children do the work (process 0 reports metrics, predicts, saves and writes ``result.json``) and the parent waits,
forwards SIGTERM/SIGINT to them and passes their exit code on. The command is an argv list with the spec as a file
path: nothing is ever spliced into shell text.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from shared.config import TrainingConfig


def is_launched_child() -> bool:
    """True inside a process started by ``accelerate launch`` (or torchrun)."""
    return "LOCAL_RANK" in os.environ


def mixed_precision(config: TrainingConfig) -> str:
    t = config.training
    return "bf16" if t.bf16 else "fp16" if t.fp16 else "no"


def build_launch_command(
    spec_path: str,
    gpu_count: int,
    *,
    python: str = sys.executable,
    mixed_precision: str = "no",
    main_process_port: int | None = None,
) -> list[str]:
    """The argv that runs ``python -m trainer --spec spec_path`` as ``gpu_count`` data-parallel processes."""
    if gpu_count < 2:
        raise ValueError(f"gpu_count={gpu_count}: a launch is only needed for 2 or more GPUs")
    command = [
        python, "-m", "accelerate.commands.launch",
        "--multi_gpu",
        "--num_machines", "1",
        "--num_processes", str(gpu_count),
        "--mixed_precision", mixed_precision,
        "--dynamo_backend", "no",
    ]
    if main_process_port is not None:
        command += ["--main_process_port", str(main_process_port)]
    return [*command, "-m", "trainer", "--spec", os.fspath(spec_path)]


def run_launched(command: list[str]) -> int:
    """Run ``command`` in its own process group; forward SIGTERM/SIGINT to it; return its exit code."""
    child = subprocess.Popen(command, start_new_session=True)

    def forward(signum, _frame):
        if child.poll() is None:
            os.killpg(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
