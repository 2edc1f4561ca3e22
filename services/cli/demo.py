"""``tunefleet demo``: the whole flow on this machine, followed live in the terminal."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.settings import Settings
from shared.trainer_users import share_with_trainers

from .sse import iter_events
from .stack import Stack

DEMO_USER = "demo"


def _prepare(settings: Settings, console: Console) -> tuple[Path, Path]:
    """The tiny model goes to the data folder's models/, where every user may name a model by path."""
    from trainer.tiny_model import build_tiny_model, write_sample_dataset

    model_dir, data_path = settings.models_dir / "tiny-demo", settings.home / "demo" / "sample.jsonl"
    if not (model_dir / "config.json").exists():
        with console.status("building a tiny Llama-style model and its tokenizer…"):
            build_tiny_model(str(model_dir))
            share_with_trainers(model_dir)
    if not data_path.exists():
        data_path.parent.mkdir(parents=True, exist_ok=True)
        write_sample_dataset(str(data_path), rows=96, fmt="instruction")
    return model_dir, data_path


def _config(model_dir: Path, dataset_id: str, steps: int) -> dict:
    return {
        "name": "tiny-demo",
        "model": {"base_model": str(model_dir), "max_seq_length": 128},
        "data": {"dataset_id": dataset_id, "eval_split": 0.1},
        "training": {"method": "sft", "max_steps": steps, "batch_size": 8, "learning_rate": 5e-3,
                     "logging_steps": 1, "eval_steps": max(1, steps // 4), "save_steps": steps,
                     "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}},
        "predictions": {"sample_count": 3, "frequency": "eval", "max_new_tokens": 12, "temperature": 0.0},
    }


def _follow(client: httpx.Client, job_id: str, steps: int, console: Console) -> str:
    status = "queued"
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("step {task.completed:.0f}/"
                  "{task.total:.0f}"), TextColumn("{task.fields[loss]}"), TimeElapsedColumn(),
                  console=console) as progress:
        task = progress.add_task("queued", total=steps, loss="")
        with client.stream("GET", f"/api/training/jobs/{job_id}/events", timeout=None) as response:
            for event, data in iter_events(response):
                if event in ("snapshot", "status"):
                    status = data["status"]
                    progress.update(task, description=status)
                elif event == "metrics":
                    for point in data["metrics"]:
                        loss = point["values"].get("loss")
                        progress.update(task, completed=point["step"],
                                        **({"loss": f"loss {loss:.3f}"} if loss is not None else {}))
        if status == "completed":
            progress.update(task, completed=steps)
    return status


def _show_results(client: httpx.Client, job_id: str, console: Console) -> dict | None:
    metrics = client.get(f"/api/training/metrics/{job_id}", params={"limit": 10000}).json()
    losses = [m["loss"] for m in metrics["metrics"] if "loss" in m]
    if losses:
        console.print(f"{metrics['total_count']} steps logged; loss {losses[0]:.3f} → {losses[-1]:.3f}")
    table = Table("step", "prompt", "generated", "expected", title="Predictions on held-out samples")
    for p in sorted(client.get(f"/api/training/predictions/{job_id}", params={"limit": 12}).json()["predictions"],
                    key=lambda p: (p["step"], p["sample_index"])):
        text = re.sub(r"<\|[a-z_]+\|>|</?s>", " ", p["prompt"])  # chat-template markers, for display only
        prompt = " ".join(" ".join(line for line in text.splitlines() if not line.startswith("###")).split())
        table.add_row(str(p["step"]), prompt[-50:], p["generated"].strip()[:30], p["expected"][:30])
    console.print(table)
    model = _wait_for_model(client, job_id)
    if model:
        console.print(f"[bold green]registered model[/] {model['id']} ({model['name']}): base {model['base_model']},"
                      f" LoRA r={model['lora_r']} alpha={model['lora_alpha']}, final loss {model['final_loss']:.3f},"
                      f" {model['training_seconds']:.0f}s of training, {model['dataset_rows']} rows")
    return model


def _wait_for_model(client: httpx.Client, job_id: str, timeout: float = 60.0) -> dict | None:
    """The registry works from the job's completion event, so the model appears a moment later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(f"/api/training/jobs/{job_id}").json().get("model_id"):
            return next(m for m in client.get("/api/models").json() if m["job_id"] == job_id)
        time.sleep(0.3)
    return None


def _serve_and_ask(client: httpx.Client, model: dict, row: dict, gateway_url: str, key: str,
                   console: Console) -> bool:
    """Serve the registered model on the built-in server and ask it a question through the gateway's /v1 with the
    openai client, the way any OpenAI-compatible program would."""
    import openai

    response = client.post("/api/training/deploy", json={"model_id": model["id"], "server_type": "builtin"})
    if response.status_code != 202:
        console.print(f"[red]serving was refused[/]: {response.text}")
        return False
    serving = response.json()
    deadline = time.monotonic() + 300
    with console.status("serving the model on the built-in server…"):
        while serving["state"] == "starting" and time.monotonic() < deadline:
            time.sleep(0.5)
            serving = client.get(f"/api/servings/{serving['id']}").json()
    if serving["state"] != "ready":
        console.print(f"[red]serving is {serving['state']}[/]: {serving['reason']}")
        return False
    console.print(f"serving [bold]{serving['name']}[/] at {serving['base_url']} (OpenAI-compatible)")
    # the user message as training rendered the row (trainer.data.render_instruction_prompt)
    question = f"{row['instruction']}\n\n{row['input']}" if row.get("input", "").strip() else row["instruction"]
    ai = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key=key)
    answer = ai.chat.completions.create(model=serving["name"], messages=[{"role": "user", "content": question}],
                                        max_tokens=12, temperature=0.0)
    text = answer.choices[0].message.content or ""
    console.print(f"[bold]Q:[/] {' '.join(question.split())}\n[bold]A:[/] [bold cyan]{text.strip()}[/] "
                  f"(the data set says {row['output']})")
    return True


def run_demo(*, steps: int, keep_running: bool, console: Console) -> int:
    from services.cli.main import _new_key

    settings = Settings()
    model_dir, data_path = _prepare(settings, console)
    stack = Stack(settings)
    try:
        with console.status("starting NATS, PostgreSQL and the services…"):
            stack.up()
        console.print(f"TuneFleet is up at {stack.gateway_url} (data in {stack.settings.home})")
        key = asyncio.run(_new_key(stack.settings.require_database_url(), DEMO_USER))
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=stack.gateway_url, headers=headers, timeout=30) as client:
            with open(data_path, "rb") as f:
                dataset = client.post("/api/training/datasets", files={"file": ("sample.jsonl", f)}).json()
            console.print(f"uploaded {dataset['rows']} {dataset['format']} rows")
            config = client.post("/api/training/configurations", json=_config(model_dir, dataset["id"], steps)).json()
            job = client.post("/api/training/deploy/local", json={"configuration_id": config["id"]}).json()
            console.print(f"deployed job {job['job_id']} on local")
            status = _follow(client, job["job_id"], steps, console)
            console.print(f"job {job['job_id']} ended [bold]{status}[/]")
            if status != "completed":
                console.print(client.get(f"/api/training/jobs/{job['job_id']}").json().get("logs_tail") or "")
                return 1
            model = _show_results(client, job["job_id"], console)
            if model is None:
                console.print("[red]the model was not registered[/]")
                return 1
            row = json.loads(random.Random(0).choice(data_path.read_text().splitlines()))
            if not _serve_and_ask(client, model, row, stack.gateway_url, key, console):
                return 1
            if keep_running:
                console.print(f"The stack stays up; your API key: {key}. Ctrl-C stops it.")
                stack.supervise_until_signal()
        return 0
    finally:
        with console.status("stopping…"):
            stack.stop()
