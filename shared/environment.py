"""The environment of a process that runs a user's configuration on a server of TuneFleet's (preflight, local
trainers): what the machine needs to run Python, find its caches and reach the network the operator set up, and
nothing else. No ``TUNEFLEET_*`` setting, database URL, cloud or hub credential of the server gets through: a
configuration could otherwise name one (a judge key variable) or read it from ``/proc/self/environ``.
"""

from __future__ import annotations

import os

#: Passed through by exact name.
NAMES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_ENDPOINT", "HF_HUB_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "TORCH_HOME",
    "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
    "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
})
#: Set unless the operator's environment sets them.
QUIET = {"HF_HUB_DISABLE_TELEMETRY": "1"}
#: Passed through by prefix: locale and math-library tuning.
PREFIXES = ("LC_", "OPENBLAS_")


def minimal_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment reduced to ``NAMES`` and ``PREFIXES``, plus ``extra``. The Hugging Face libraries'
    usage reports are off unless the operator turns them on: a job's run is not news for the hub."""
    env = {k: v for k, v in os.environ.items() if k in NAMES or k.startswith(PREFIXES)}
    return {**QUIET, **env, "PYTHONUNBUFFERED": "1", **(extra or {})}
