"""The README's first command, as a newcomer runs it: ``tunefleet demo``, and ``tunefleet tiny-model``."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from services.cli.embedded import free_port

pytestmark = pytest.mark.e2e


def cli_env(home) -> dict:
    env = {**os.environ, "TUNEFLEET_HOME": str(home), "TUNEFLEET_GATEWAY_PORT": str(free_port()),
           "TUNEFLEET_INGEST_PORT": str(free_port()), "TUNEFLEET_NATS_PORT": str(free_port()), "COLUMNS": "160"}
    for name in ("TUNEFLEET_NATS_URL", "TUNEFLEET_DATABASE_URL", "TUNEFLEET_SECRET_KEY"):
        env.pop(name, None)
    return env


def test_tiny_model_command_writes_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny"
    subprocess.run([sys.executable, "-m", "services.cli.main", "tiny-model", str(out)], check=True,
                   env=cli_env(tmp_path / "home"), timeout=120, capture_output=True)
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama"
    assert tokenizer.decode(tokenizer("hello world").input_ids, skip_special_tokens=True).strip() == "hello world"


def test_demo_runs_the_whole_flow_and_the_model_answers(tmp_path):
    run = subprocess.run([sys.executable, "-m", "services.cli.main", "demo", "--steps", "60"],
                         env=cli_env(tmp_path / "home"), timeout=600, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "ended completed" in out
    assert "registered model" in out
    losses = out.split("60 steps logged; loss ")[1].split()[0:3]
    first, last = float(losses[0]), float(losses[2])
    assert last < first
    answer = out.split("A: ")[1].splitlines()[0]
    assert "(the data set says" in answer
    # Nothing is left running: the stack stopped with the demo.
    home = str(tmp_path / "home")
    leftover = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
                if home in " ".join(p.info["cmdline"] or [])]
    assert leftover == []
