"""Running a cloud workload on this machine: the container's command as a local process group."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path


def spawn(command: str | list[str], env: dict[str, str], workdir: Path, log_path: Path) -> subprocess.Popen:
    """Start ``command`` (an argv list, or a string split like a container's CMD, never through a shell) with
    this Python's bin folder first on PATH, standing in for the image's Python."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    workdir.mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    full_env = {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(workdir),
                "PYTHONUNBUFFERED": "1", **env}
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(10)
