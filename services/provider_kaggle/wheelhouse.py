"""The trainer's requirements as wheels, for a Kaggle kernel with internet off (it cannot reach PyPI).

Built on the provider host with ``pip wheel``, torch pinned to the version installed here so that pip never
fetches a CUDA build; torch, ``nvidia-*`` and triton wheels are then dropped (Kaggle's image has torch). Cached under
``{home}/cache/kaggle-wheelhouse-<hash of the requirements>``, built once, under a lock across processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from pathlib import Path

from shared.errors import ProviderError

#: torch's own wheels: torch, triton and its CUDA libraries (``nvidia_*_cu12``); ``nvidia-ml-py``, a requirement of
#: the trainer's own, stays.
DROPPED = ("torch-", "triton-")
BUILD_TIMEOUT_S = 1800


def wheelhouse(cache: Path, requirements: list[str]) -> Path:
    key = hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:16]
    folder = cache / f"kaggle-wheelhouse-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f"kaggle-wheelhouse-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / ".ready").exists():
            return folder
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        constraints = partial / "constraints.txt"
        constraints.write_text(f"torch=={md.version('torch').split('+')[0]}\n")
        argv = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-input", "--progress-bar",
                "off", "--wheel-dir", str(partial), "-c", str(constraints), *requirements]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, env=_build_env())
        if done.returncode != 0:
            raise ProviderError(f"building the wheelhouse for an offline Kaggle kernel failed: {done.stderr[-600:]}")
        wanted = {_canonical(r) for r in requirements}
        for wheel in partial.glob("*.whl"):
            name = wheel.name.lower()
            if name.startswith(DROPPED) or (name.startswith("nvidia") and _canonical(name.split("-")[0])
                                            not in wanted):
                wheel.unlink()
        constraints.unlink()
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        (folder / ".ready").touch()
    return folder


#: What pip needs of the provider's environment to reach its package index; nothing else of the service (its
#: sealing key, its database URL) reaches the builds, which may run a package's own setup code.
PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")


def _build_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k in PASSED or k.startswith("PIP_") or k.lower() in ("http_proxy", "https_proxy", "no_proxy")}


def _canonical(requirement: str) -> str:
    """A distribution's name as wheel files and requirements compare: lowercase, ``-`` and ``.`` as ``_``."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        name = Requirement(requirement).name
    except InvalidRequirement:
        name = requirement
    return name.lower().replace("-", "_").replace(".", "_")
