"""The emulated clouds' machines: what a stock image has, and processes that run on it.

A machine image is a folder whose ``bin/`` comes first on the machine's PATH, holding the image's Python:

* ``runpod-stock``: a plain CPython 3.11 (a copy of this interpreter's installation without its site-packages)
  with pip and torch, standing in for ``pytorch/pytorch``: a system Python with torch and nothing of TuneFleet.
* ``lambda-stock``: a bare Python 3.10 with pip, standing in for Lambda Stack on Ubuntu 22.04, whose python3 is
  3.10 (its apt torch is for 3.10, so a 3.11 trainer could not use it either).
* ``python-3.11.tar.gz``: a CPython 3.11 archive in python-build-standalone's layout (``python/bin/python3``), for a
  machine's bootstrap to download as it would the real one.

Neither image can import ``trainer`` or ``shared``. The rest of a machine's PATH is a folder of links to basic
tools (bash, tar, ...), so that no other Python of this host is found. Installs inside a machine reach the package
index and the wheels on this disk, as a real machine reaches the internet; the download cache is shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata as md
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil

TOOLS = ("bash", "sh", "env", "tar", "gzip", "cat", "ls", "mkdir", "rm", "cp", "mv", "touch", "setsid", "nohup",
         "sleep", "uname", "id", "grep", "sed", "head", "tail", "dirname", "basename", "readlink", "nproc", "true",
         "false", "chmod", "ldconfig", "date", "kill", "ps")
EXCLUDED = ("site-packages", "test", "__pycache__", "idlelib", "tkinter", "turtledemo")


@dataclass(frozen=True)
class MachineImage:
    """``bin_dir`` comes first on the machine's PATH; ``entrypoint`` and ``cmd`` are the image's ENTRYPOINT and
    CMD (a pod's plain-string command replaces CMD and is handed to ENTRYPOINT, as Docker does); ``pull_s`` is
    how long the image takes to pull."""

    name: str
    bin_dir: Path
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ("bash",)
    pull_s: float = 0.0


#: Set in every process of an emulated machine, so that the emulator can find them all (a detached one too).
MACHINE_MARKER = "EMULATED_MACHINE_ID"


@dataclass(frozen=True)
class StockImages:
    runpod: Path
    lambda_stack: Path
    python_archive: Path
    python_sha256: str
    tools: Path
    pip_cache: Path


def _copy_python(source: Path, target: Path) -> None:
    """A relocated copy of a CPython installation without its installed packages."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns(*EXCLUDED))
    (target / "lib" / version / "site-packages").mkdir(parents=True, exist_ok=True)


def _python310() -> Path:
    """A Python 3.10 of this host (on PATH, or one of pyenv's), to stand in for Lambda Stack's python3."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which("python3.10"), "/usr/bin/python3.10", "/usr/local/bin/python3.10",
                  *sorted(str(p) for p in pyenv.glob("3.10*/bin/python3.10"))]
    for candidate in filter(None, candidates):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([candidate, "-c", "import sys, venv, ensurepip; print(sys.executable)"],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode == 0:
                return Path(out.stdout.strip())
    raise RuntimeError("the Lambda sandbox needs a Python 3.10 (python3.10 on PATH, or under pyenv) to stand in "
                       "for Lambda Stack's python3")


def _run(argv: list[str], **kw) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=1800, **kw)


def build_stock_images(folder: Path) -> StockImages:
    """Build the stock images once (a few tens of seconds) and reuse them; safe across processes."""
    folder.mkdir(parents=True, exist_ok=True)
    torch = md.version("torch").split("+")[0] if _installed("torch") else "2.13.0"
    key = hashlib.sha256(f"{sys.base_prefix}|{sys.version}|{torch}|2".encode()).hexdigest()[:12]
    root = folder / key
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (root / ".ready").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            _build(root, torch)
            (root / ".ready").touch()
    archive = root / "python-3.11.tar.gz"
    return StockImages(runpod=root / "runpod-stock", lambda_stack=root / "lambda-stock", python_archive=archive,
                       python_sha256=(root / "python-3.11.tar.gz.sha256").read_text().strip(),
                       tools=root / "tools", pip_cache=folder / "pip-cache")


def _installed(name: str) -> bool:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True


def _build(root: Path, torch: str) -> None:
    tools = root / "tools"
    tools.mkdir()
    for tool in TOOLS:
        if found := shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            (tools / tool).symlink_to(found)
    # A CPython 3.11 archive as python-build-standalone ships it: python/bin/python3 ...
    staging = root / "staging" / "python"
    _copy_python(Path(sys.base_prefix), staging)
    archive = root / "python-3.11.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(staging, arcname="python")
    (root / "python-3.11.tar.gz.sha256").write_text(hashlib.sha256(archive.read_bytes()).hexdigest())
    # RunPod's stock image: that Python with pip and torch in its own site-packages.
    runpod = root / "runpod-stock"
    staging.rename(runpod)
    shutil.rmtree(root / "staging")
    python = runpod / "bin" / "python3"
    _run([str(python), "-m", "ensurepip"])
    _run([str(python), "-m", "pip", "install", "--no-compile", "--disable-pip-version-check", f"torch=={torch}"])
    # Lambda Stack's python3: a bare 3.10 with pip.
    lambda_stack = root / "lambda-stock"
    _run([str(_python310()), "-m", "venv", str(lambda_stack)])


def machine_env(machine_id: str, image: MachineImage, stock: StockImages, home: Path,
                env: dict[str, str]) -> dict[str, str]:
    """The environment a process on an emulated machine starts with: the image's PATH, its own home, the
    shared download cache, and what the cloud's API was asked to set."""
    return {**package_sources(), "PATH": f"{image.bin_dir}:{stock.tools}", "HOME": str(home), "LANG": "C.UTF-8",
            "PIP_CACHE_DIR": str(stock.pip_cache), MACHINE_MARKER: machine_id, **env}


def package_sources() -> dict[str, str]:
    """Where this host's pip finds packages (its index settings and user config, wheels on this disk): what
    stands in for the internet on an emulated machine, whose own home holds no pip configuration."""
    sources = {k: v for k, v in os.environ.items()
               if k.startswith("PIP_") and k not in ("PIP_CACHE_DIR", "PIP_CONFIG_FILE", "PIP_REQUIRE_VIRTUALENV")}
    for config in (os.environ.get("PIP_CONFIG_FILE"), Path.home() / ".config" / "pip" / "pip.conf",
                   Path.home() / ".pip" / "pip.conf"):
        if config and Path(config).is_file():
            sources["PIP_CONFIG_FILE"] = str(config)
            break
    return sources


def machine_processes(machine_id: str) -> list[psutil.Process]:
    """Every live process of an emulated machine."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(MACHINE_MARKER) == machine_id:
                found.append(process)
    return found


LOG_NAMES = ("train.log", "container.log", "bootstrap.out")


def discard_disk(folder: Path, keep: Path) -> None:
    """A terminated machine's disk is gone (removed in the background); its logs are kept under ``keep`` first
    (the cloud's console keeps them), at the same relative paths."""
    if not folder.exists():
        return
    for log in (p for name in LOG_NAMES for p in folder.rglob(name)):
        target = keep / log.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(log, target)
    threading.Thread(target=shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True}, daemon=True).start()


def kill_machine(machine_id: str) -> None:
    for process in machine_processes(machine_id):
        with contextlib.suppress(psutil.Error):
            process.kill()


def spawn(argv: list[str], env: dict[str, str], workdir: Path, log_path: Path) -> subprocess.Popen:
    """Start ``argv`` (never through a shell of ours) as a process group of the emulated machine."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    program = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
    with open(log_path, "ab") as log:
        return subprocess.Popen([program, *argv[1:]], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def kill_group(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
