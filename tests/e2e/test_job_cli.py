"""The job CLI through the real stack, as a person runs it: ``tunefleet`` in a subprocess with TUNEFLEET_URL and
TUNEFLEET_API_KEY (or what ``tunefleet login`` stored) and a config folder of its own. Data sets, configurations, a
job deployed on ``local`` with the tiny model and followed to ``completed``, Ctrl-C that detaches while the job
goes on, ``--json`` that parses, and a bad configuration refused field by field."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import RunningStack, wait_for_status

pytestmark = pytest.mark.e2e

STEPS = 12


@pytest.fixture(scope="module")
def key(stack: RunningStack) -> str:
    """A user of this module's own, so that its listings hold only its jobs."""
    return stack.cli("keys", "create", "--user", "cli-carol").strip()


@pytest.fixture(scope="module")
def client(stack: RunningStack, key: str) -> httpx.Client:
    with httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
        yield http


@pytest.fixture
def env(stack: RunningStack, key: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "TUNEFLEET_URL": stack.url, "TUNEFLEET_API_KEY": key, "COLUMNS": "200",
            "XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path)}


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "services.cli.main", *args], env=env, capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    if env.get("TUNEFLEET_API_KEY"):
        assert env["TUNEFLEET_API_KEY"] not in run.stdout + run.stderr  # never printed
    return run


def as_json(run: subprocess.CompletedProcess):
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout)


def config_file(folder: Path, name: str, base_model: str, steps: int, **training) -> Path:
    path = folder / f"{name}.json"
    path.write_text(json.dumps({
        "name": name, "model": {"base_model": base_model, "max_seq_length": 64},
        "data": {"eval_split": 0.2},
        "training": {"max_steps": steps, "batch_size": 4, "learning_rate": 5e-3, "logging_steps": 1,
                     "eval_steps": steps, "save_steps": steps, **training},
        "predictions": {"enabled": False}}))
    return path


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory) -> Path:
    from trainer.tiny_model import write_sample_dataset

    return Path(write_sample_dataset(str(tmp_path_factory.mktemp("cli-data") / "cli-data.jsonl"), rows=48,
                                     fmt="instruction"))


def test_deploy_follows_the_job_to_completed_and_every_listing_parses(env, tmp_path, tiny_model_dir, dataset_file,
                                                                      client):
    dataset = as_json(cli(env, "datasets", "upload", str(dataset_file), "--json"))
    assert dataset["rows"] == 48 and dataset["format"] == "instruction"
    assert as_json(cli(env, "datasets", "show", dataset["id"][:8], "--json"))["id"] == dataset["id"]
    saved = as_json(cli(env, "configs", "create", str(config_file(tmp_path, "cli-run", tiny_model_dir, STEPS)),
                        "--name", "cli-first", "--json"))
    assert saved["config"]["name"] == "cli-first"
    assert as_json(cli(env, "configs", "show", "cli-first"))["training"]["max_steps"] == STEPS
    estimate = as_json(cli(env, "estimate", "cli-first", "--dataset", "cli-data.jsonl", "--json"))
    assert estimate["memory"]["peak_gib"] > 0 and estimate["data"]["rows"] == 48

    run = cli(env, "deploy", "cli-first", "--provider", "local", "--dataset", dataset["id"][:8])
    assert run.returncode == 0, run.stdout + run.stderr
    job_id = re.search(r"deployed job (\S+)", run.stdout).group(1)
    assert "estimate:" in run.stdout
    assert f"step {STEPS}/{STEPS}" in run.stdout and f"job {job_id} ended completed" in run.stdout

    jobs = as_json(cli(env, "jobs", "list", "--json"))
    job = next(j for j in jobs if j["job_id"] == job_id)
    assert job["status"] == "completed" and job["name"] == "cli-first" and job["attempt"] == 1
    table = cli(env, "jobs", "list")
    assert table.returncode == 0
    header, *rows = [line for line in table.stdout.splitlines() if line.strip()]
    assert header.split() == ["ID", "NAME", "STATUS", "PROVIDER", "GPU", "$/H", "COST", "ETA", "ATTEMPTS", "ERROR",
                              "CREATED"]
    assert any(row.split()[:4] == [job_id[:8], "cli-first", "completed", "local"] for row in rows)
    shown = as_json(cli(env, "jobs", "show", job_id[:8], "--json"))
    assert shown["job_id"] == job_id and shown["errors"] == []
    assert cli(env, "jobs", "show", "cli-first").returncode == 0
    logs = as_json(cli(env, "jobs", "logs", "cli-first", "--json"))
    assert logs["job_id"] == job_id and isinstance(logs["lines"], list)
    assert cli(env, "jobs", "logs", job_id).returncode == 0
    assert cli(env, "jobs", "watch", job_id[:8]).returncode == 0  # already ended: its end at once

    deadline = time.monotonic() + 60
    while not (model_id := client.get(f"/api/training/jobs/{job_id}").json()["model_id"]):
        assert time.monotonic() < deadline, "the model was never registered"
        time.sleep(0.5)
    models = as_json(cli(env, "models", "list", "--json"))
    assert [m["id"] for m in models if m["job_id"] == job_id] == [model_id]
    assert as_json(cli(env, "models", "show", "cli-first"))["id"] == model_id
    target = tmp_path / "adapter.tar"
    assert cli(env, "models", "download", model_id[:8], "-o", str(target)).returncode == 0
    with tarfile.open(target) as tar:
        assert any(name.endswith("adapter_config.json") for name in tar.getnames())
    # serve and chat go through the same client: the model by its id prefix, on the built-in server.
    served = cli(env, "serve", model_id[:8], "--engine", "builtin", "--name", "cli-first-served")
    assert served.returncode == 0 and "ready" in served.stdout, served.stdout + served.stderr
    chat = cli(env, "chat", "cli-first-served", "-m", "hello", "--max-tokens", "3", "--temperature", "0")
    assert chat.returncode == 0, chat.stdout + chat.stderr  # what a 12-step tiny model says may be blank
    serving = next(s for s in client.get("/api/servings").json() if s["name"] == "cli-first-served")
    assert client.delete(f"/api/servings/{serving['id']}").status_code == 200
    costs = as_json(cli(env, "costs", "--json", "--by", "job"))
    assert job_id in {g["key"] for g in costs["groups"]} and costs["currency"] == "USD"
    assert cli(env, "costs").returncode == 0
    assert dataset["id"] in {d["id"] for d in as_json(cli(env, "datasets", "list", "--json"))}
    assert saved["id"] in {c["id"] for c in as_json(cli(env, "configs", "list", "--json"))}
    assert cli(env, "configs", "list").returncode == 0 and cli(env, "models", "list").returncode == 0


def test_ctrl_c_detaches_and_the_job_still_completes(env, tmp_path, tiny_model_dir, dataset_file, client):
    dataset = as_json(cli(env, "datasets", "upload", str(dataset_file), "--json"))
    path = config_file(tmp_path, "cli-long", tiny_model_dir, 80)
    process = subprocess.Popen([sys.executable, "-m", "services.cli.main", "deploy", str(path), "--dataset",
                                dataset["id"]], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    seen, deadline = [], time.monotonic() + 300
    while not any(re.search(r"step [1-9]\d*/80", line) for line in seen):
        assert time.monotonic() < deadline and process.poll() is None, "".join(seen) + process.stderr.read()
        with contextlib.suppress(queue.Empty):
            seen.append(lines.get(timeout=1))
    process.send_signal(signal.SIGINT)
    assert process.wait(60) == 130
    stderr = process.stderr.read()
    job_id = re.search(r"deployed job (\S+)", "".join(seen)).group(1)
    assert f"tunefleet jobs watch {job_id}" in stderr
    assert client.get(f"/api/training/jobs/{job_id}").json()["status"] not in {"stopped", "failed"}

    finished = wait_for_status(client, job_id, {"completed"}, timeout=400)  # detaching stopped nothing
    assert finished["result"]["global_step"] == 80
    assert cli(env, "jobs", "watch", job_id).returncode == 0

    # Retried, it is a new job; stopped, its watch ends with exit code 3.
    retried = cli(env, "jobs", "retry", job_id[:8], "-d")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    again = re.search(r"job (\S+) on local", retried.stdout).group(1)
    assert again != job_id
    stopped = cli(env, "jobs", "stop", again, "--wait")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert cli(env, "jobs", "watch", again).returncode == 3


def test_a_bad_configuration_is_refused_field_by_field(env, tmp_path, tiny_model_dir, dataset_file, client):
    bad = config_file(tmp_path, "cli-bad", tiny_model_dir, 5, learning_rate=5, weight_decay=2)
    before = {j["job_id"] for j in client.get("/api/training/jobs").json()}
    for args in (("configs", "create", str(bad)), ("deploy", str(bad), "--provider", "local"),
                 ("estimate", str(bad))):
        run = cli(env, *args)
        assert run.returncode == 2, run.stdout + run.stderr
        assert "training.learning_rate: Input should be less than 1" in run.stderr, run.stderr
        assert "training.weight_decay: Input should be less than 1" in run.stderr
    assert {j["job_id"] for j in client.get("/api/training/jobs").json()} == before  # nothing was deployed
    both = config_file(tmp_path, "cli-both", tiny_model_dir, 5, bf16=True, fp16=True)
    run = cli(env, "configs", "create", str(both))
    assert run.returncode == 2 and "training.bf16 and training.fp16 are both true: choose one" in run.stderr

    lines = tmp_path / "broken.jsonl"
    lines.write_text('{"text": "fine"}\nnot json\n{"text": "fine"}\n{"nothing": 1}\n')
    run = cli(env, "datasets", "upload", str(lines))
    assert run.returncode == 2 and "line 2:" in run.stderr and "line 4:" in run.stderr, run.stderr

    assert cli(env, "jobs", "show", "no-such-job").returncode == 2
    # Where it costs money, a deploy without a terminal to ask on is refused unless -y.
    good = config_file(tmp_path, "cli-good", tiny_model_dir, 5)
    dataset = as_json(cli(env, "datasets", "upload", str(dataset_file), "--json"))
    run = cli(env, "deploy", str(good), "--provider", "runpod", "--dataset", dataset["id"])
    assert run.returncode == 2 and "-y/--yes" in run.stderr, run.stdout + run.stderr


def test_configs_edit_puts_what_the_editor_saved_and_login_stores_the_key(env, tmp_path, tiny_model_dir, key, stack):
    saved = as_json(cli(env, "configs", "create", str(config_file(tmp_path, "cli-edit", tiny_model_dir, 5)),
                        "--json"))
    editor = tmp_path / "editor.py"
    editor.write_text("import json, sys\npath = sys.argv[1]\nconfig = json.load(open(path))\n"
                      "config['training']['max_steps'] = 7\njson.dump(config, open(path, 'w'))\n")
    run = cli({**env, "EDITOR": f"{sys.executable} {editor}", "VISUAL": ""}, "configs", "edit", saved["id"][:8])
    assert run.returncode == 0, run.stdout + run.stderr
    assert as_json(cli(env, "configs", "show", saved["id"]))["training"]["max_steps"] == 7

    stored = {k: v for k, v in env.items() if k not in ("TUNEFLEET_URL", "TUNEFLEET_API_KEY")}
    assert cli(stored, "jobs", "list").returncode == 2  # no key anywhere
    login = cli(stored, "login", "--url", stack.url, "--key", key)
    assert login.returncode == 0 and key not in login.stdout + login.stderr, login.stderr
    path = tmp_path / "config" / "tunefleet" / "credentials.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert isinstance(as_json(cli(stored, "jobs", "list", "--json")), list)
    assert cli(stored, "login", "--url", stack.url, "--key", "tf_wrong").returncode == 1  # refused, not stored
    assert json.loads(path.read_text())["api_key"] == key
    assert cli(stored, "logout").returncode == 0 and not path.exists()
