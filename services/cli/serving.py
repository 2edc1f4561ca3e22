"""``tunefleet serve``, ``tunefleet chat`` and ``tunefleet serving install``: serving from the terminal, through a
gateway at ``TUNEFLEET_URL`` with ``TUNEFLEET_API_KEY``."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import typer
from rich.console import Console

from . import credentials
from .client import CliError, ExitCode, Gateway, handled

console = Console()
serving = typer.Typer(help="Serving engines installed on this server.")

URL_OPTION = typer.Option(None, "--url", envvar="TUNEFLEET_URL", help="The gateway (default: the one `tunefleet "
                                                                      "login` stored, else http://127.0.0.1:8000).")
KEY_OPTION = typer.Option(None, "--api-key", envvar="TUNEFLEET_API_KEY", help="Your API key (default: the one "
                                                                             "`tunefleet login` stored).")


def wait_ready(client: httpx.Client, serving_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    with console.status("starting the engine…"):
        while True:
            record = client.get(f"/api/servings/{serving_id}").json()
            if record["state"] != "starting" or time.monotonic() > deadline:
                return record
            time.sleep(1.0)


@handled
def serve(model: str = typer.Argument(..., help="Model id, id prefix, job id or name."),
          engine: str = typer.Option("builtin", "--engine", help="vllm, ollama or builtin."),
          name: str = typer.Option(None, help="The name callers use on /v1 (default: the model's)."),
          checkpoint: str = typer.Option(None, help="Serve one of the job's checkpoints, e.g. "
                                                    "checkpoints/checkpoint-20."),
          max_model_len: int = typer.Option(None, help="The longest prompt plus answer, in tokens."),
          wait: float = typer.Option(900, help="Seconds to wait for ready (0: do not wait)."),
          url: str = URL_OPTION, api_key: str = KEY_OPTION) -> None:
    """Serve a registered model and print how to call it."""
    with Gateway.open(url, api_key) as gateway:
        client = gateway.http
        found = gateway.model(model)
        body = {"model_id": found["id"], "server_type": engine, "name": name, "checkpoint_path": checkpoint,
                "config": {"max_model_len": max_model_len} if max_model_len else {}}
        record = gateway.call("POST", "/api/training/deploy", ok=(202,),
                              json={k: v for k, v in body.items() if v is not None}).json()
        console.print(f"serving {record['id']} of {found['name']} v{found.get('version', 1)} on {engine}: "
                      f"{record['state']}")
        if wait:
            record = wait_ready(client, record["id"], wait)
        for finding in record["findings"]:
            console.print(f"[yellow]{finding['level']}[/] {finding['field']}: {finding['message']}")
        if record["state"] == "failed":
            console.print(f"[red]failed[/]: {record['reason']}")
            raise typer.Exit(1)
        console.print(f"[bold green]{record['state']}[/]: model [bold]{record['name']}[/] at {record['base_url']}\n"
                      f"  curl {record['base_url']}/chat/completions -H 'Authorization: Bearer $TUNEFLEET_API_KEY' "
                      f"-H 'Content-Type: application/json' -d '{{\"model\": \"{record['name']}\", \"messages\": "
                      "[{\"role\": \"user\", \"content\": \"Hello\"}]}'\n"
                      f"  tunefleet chat {record['name']}")


@handled
def chat(model: str = typer.Argument(..., help="The served model's name (GET /v1/models)."),
         message: str = typer.Option(None, "-m", "--message", help="Ask one question and exit."),
         max_tokens: int = typer.Option(128, help="Longest answer, in tokens."),
         temperature: float = typer.Option(0.7),
         url: str = URL_OPTION, api_key: str = KEY_OPTION) -> None:
    """Chat with a served model through the gateway's OpenAI-compatible /v1 (streamed)."""
    import openai

    creds = credentials.resolve(url, api_key)
    if not creds.key:
        raise CliError("no API key", ExitCode.BAD_INPUT, [f"set {credentials.KEY_ENV}, pass --api-key, or run "
                                                          "`tunefleet login`"])
    client = openai.OpenAI(base_url=f"{creds.url}/v1", api_key=creds.key)
    history: list[dict] = []
    while True:
        text = message if message is not None else console.input("[bold]you>[/] ")
        if not text.strip():
            if message is not None:
                return
            continue
        history.append({"role": "user", "content": text})
        try:
            stream = client.chat.completions.create(model=model, messages=history, max_tokens=max_tokens,
                                                    temperature=temperature, stream=True)
            answer = ""
            for chunk in stream:
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    answer += piece
                    console.print(piece, end="", markup=False, highlight=False)
            console.print()
        except openai.APIError as exc:
            console.print(f"[red]{exc.__class__.__name__}[/]: {exc.message}")
            raise typer.Exit(1) from exc
        history.append({"role": "assistant", "content": answer})
        if message is not None:
            return


@serving.command("install")
def install(engine: str = typer.Argument(..., help="vllm"),
            venv: Path = typer.Option(None, help="Where to make its environment (default: {home}/engines/vllm, "
                                                 "where the registry looks).")) -> None:
    """Make the virtual environment an engine runs in (vLLM pins its own torch and transformers)."""
    from services.model_registry.serving import vllm_engine
    from shared.settings import Settings

    if engine != "vllm":
        console.print("[red]only vllm is installed this way[/]: Ollama is its own server (set TUNEFLEET_OLLAMA_URL); "
                      "builtin needs nothing")
        raise typer.Exit(2)
    target = venv or Settings().engines_dir / "vllm"
    python = vllm_engine.install(target)
    console.print(f"vLLM is installed: {python}" + ("" if venv is None else
                                                    f" (set TUNEFLEET_VLLM_PYTHON={python})"))
    elsewhere = os.environ.get("TUNEFLEET_VLLM_PYTHON")
    if elsewhere and Path(elsewhere) != python:
        console.print(f"[yellow]note[/]: TUNEFLEET_VLLM_PYTHON points elsewhere ({elsewhere})")
