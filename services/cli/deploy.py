"""``tunefleet estimate`` and ``tunefleet deploy``: what a configuration needs and costs, then training it on a
provider, asked first when it costs money, and followed to its end."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from .client import CliError, ExitCode, Gateway, handled
from .follow import follow
from .jobs import DETACH_OPTION, JSON_OPTION, watch_hint
from .resources import read_config
from .tables import money, out, print_json, table

CONFIG_ARGUMENT = typer.Argument(..., help="A saved configuration (id, unique id prefix or name) or a JSON file.")
DATASET_OPTION = typer.Option(None, "--dataset", help="The data set (id, unique id prefix or file name), for a "
                                                      "configuration that names none.")


class Provider(StrEnum):
    LOCAL = "local"
    RUNPOD = "runpod"
    LAMBDA = "lambda"
    KAGGLE = "kaggle"
    HF_SPACES = "hf-spaces"
    AUTO = "auto"


#: Seconds a deploy may take to answer (a cloud deploy first dry-runs the configuration on the gateway's CPU), and an
#: estimate (it may read the base model's config.json from the Hugging Face Hub, and ask each cloud for offers).
DEPLOY_TIMEOUT_S, ESTIMATE_TIMEOUT_S = 900.0, 120.0
#: The estimate's name of a provider, where it is not the deploy route's.
ESTIMATE_NAMES = {"hf-spaces": "hfspaces"}
#: The deploy body's field that names the GPU, per provider.
GPU_FIELDS = {Provider.RUNPOD: "gpu_type", Provider.LAMBDA: "instance_type", Provider.KAGGLE: "machine_shape",
              Provider.HF_SPACES: "gpu_tier"}


def config_source(gateway: Gateway, ref: str) -> tuple[dict, dict]:
    """The request's part that names the configuration (``configuration_id`` or ``config``), and the config."""
    if Path(ref).is_file():
        config = read_config(Path(ref))
        return {"config": config}, config
    if ref.endswith(".json"):
        raise CliError(f"no file {ref}", ExitCode.BAD_INPUT)
    saved = gateway.configuration(ref)
    return {"configuration_id": saved["id"]}, saved["config"]


def _dataset(gateway: Gateway, ref: str | None) -> dict:
    return {"dataset_id": gateway.dataset(ref)["id"]} if ref else {}


def show_estimate(answer: dict, *, rows: int = 10) -> None:
    model, memory, data = answer.get("model") or {}, answer.get("memory") or {}, answer.get("data") or {}
    facts = []
    if model.get("params") is not None:
        facts.append(f"{model['params'] / 1e6:,.1f}M parameters ({model.get('trainable_params', 0) / 1e6:,.2f}M "
                     "trained)")
    if memory.get("needed_gib") is not None:
        facts.append(f"needs {memory['needed_gib']:.2f} GiB of GPU memory (peak {memory.get('peak_gib', 0):.2f})")
    if data.get("training_tokens") is not None:
        facts.append(f"{data['training_tokens']:,} training tokens from {data.get('rows', '?')} rows")
    out.print("estimate: " + ("; ".join(facts) or "-"), highlight=False)
    candidates = answer.get("candidates") or []
    if candidates:
        out.print(table(("PROVIDER", "GPU", "FITS", "HOURS", "$/H", "COST", "WHY NOT"), (
            (c["provider"], escape(c["gpu_type"]), "yes" if c["fits"] else "[red]no[/]", f"{c['hours']:.2f}",
             money(c.get("usd_per_hour")), money(c.get("cost_usd")), escape(c.get("reason") or ""))
            for c in candidates[:rows])))
        if len(candidates) > rows:
            out.print(f"… and {len(candidates) - rows} more offers (tunefleet estimate CONFIG --json)")


def _estimate(gateway: Gateway, body: dict) -> dict:
    return gateway.post("/api/training/estimate", {k: v for k, v in body.items() if v is not None},
                        timeout=ESTIMATE_TIMEOUT_S)


@handled
def estimate(config: str = CONFIG_ARGUMENT, dataset: str = DATASET_OPTION,
             provider: str = typer.Option(None, "--provider", help="Only this provider's offers (runpod, lambda, "
                                                                   "kaggle, hf-spaces)."),
             gpu: str = typer.Option(None, "--gpu", help="Only this offer (a GPU type or instance type)."),
             as_json: bool = JSON_OPTION) -> None:
    """What a configuration needs before it runs: peak GPU memory, tokens, and per offer whether it fits, how long
    it takes and what it costs (POST /api/training/estimate)."""
    with Gateway.open() as gateway:
        source, _ = config_source(gateway, config)
        answer = _estimate(gateway, {**source, **_dataset(gateway, dataset),
                                     "provider": ESTIMATE_NAMES.get(provider, provider), "gpu_type": gpu})
    if as_json:
        print_json(answer)
        return
    show_estimate(answer, rows=50)
    for assumption in answer.get("assumptions") or []:
        out.print(f"[dim]- {escape(assumption)}[/]", highlight=False)


def deploy_body(provider: Provider, source: dict, config: dict, *, gpu: str | None, gpus: int | None,
                budget: float | None, space: str | None, title: str | None, preflight: bool | None,
                max_per_hour: float | None, extra: dict[str, Any]) -> dict:
    """The body of POST /api/training/deploy/<provider> (schemas: services/gateway/schemas.py)."""
    body: dict[str, Any] = {**source, "budget_limit": budget}
    if provider is not Provider.LOCAL:
        body["preflight"] = preflight
    if provider is Provider.AUTO:
        if gpu not in (None, "auto"):
            raise CliError("--provider auto chooses the GPU itself; name one with --provider runpod|lambda --gpu …",
                           ExitCode.BAD_INPUT)
        body["max_usd_per_hour"] = max_per_hour
    elif provider in (Provider.RUNPOD, Provider.LAMBDA):
        body[GPU_FIELDS[provider]] = gpu or "auto"
        if provider is Provider.RUNPOD:
            body["gpu_count"] = gpus
    elif provider is Provider.KAGGLE:
        body["machine_shape"] = gpu
        name = title or f"TuneFleet {config.get('name') or 'fine-tune'}"
        body["notebook_title"] = name[:50].ljust(5, "_")
    elif provider is Provider.HF_SPACES:
        if not space:
            raise CliError("hf-spaces needs --space OWNER/NAME: the Space to create (your Hugging Face user or an "
                           "organisation you can write to)", ExitCode.BAD_INPUT)
        body.update(space_name=space, gpu_tier=gpu)
    elif gpu:
        raise CliError("--gpu is for cloud providers; local trains on this machine's own", ExitCode.BAD_INPUT)
    return {k: v for k, v in {**body, **extra}.items() if v is not None}


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, each value read as JSON when it parses (numbers, true, lists), else as text."""
    found: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--set {pair!r}: write KEY=VALUE, e.g. --set alert_threshold=80", ExitCode.BAD_INPUT)
        try:
            found[key] = json.loads(value)
        except ValueError:
            found[key] = value
    return found


def _confirm(provider: Provider, estimate_answer: dict | None, yes: bool) -> None:
    """Ask before anything is paid for (every provider but local); refuse without a terminal to ask on."""
    if yes or provider is Provider.LOCAL:
        return
    if not sys.stdin.isatty():
        raise CliError(f"not deploying on {provider}: it may cost money, and there is no terminal to ask on; pass "
                       "-y/--yes to deploy without asking", ExitCode.BAD_INPUT)
    fitting = [c for c in (estimate_answer or {}).get("candidates") or [] if c.get("fits")]
    cost = f" (about {money(fitting[0].get('cost_usd'))} on {fitting[0]['gpu_type']})" if fitting else ""
    if not typer.confirm(f"Deploy on {provider}{cost}?", default=False):
        raise CliError("not deployed", ExitCode.FAILED)


@handled
def deploy(config: str = CONFIG_ARGUMENT,
           provider: Provider = typer.Option(Provider.LOCAL, "--provider", "-p", help="Where to train; auto: the "
                                                                                      "cheapest offer that fits."),
           gpu: str = typer.Option(None, "--gpu", help="RunPod GPU type, Lambda instance type, Kaggle machine shape "
                                                       "or Spaces tier; auto (RunPod, Lambda): the cheapest fit."),
           gpus: int = typer.Option(None, "--gpus", min=1, max=8, help="GPUs on the pod (RunPod)."),
           budget: float = typer.Option(None, "--budget", min=0, help="USD: stop the job when it has cost this."),
           dataset: str = DATASET_OPTION,
           space: str = typer.Option(None, "--space", help="hf-spaces: the Space to create, OWNER/NAME."),
           title: str = typer.Option(None, "--title", help="kaggle: the kernel's title."),
           max_per_hour: float = typer.Option(None, "--max-per-hour", help="auto: pass over offers dearer than this "
                                                                           "(USD/h)."),
           preflight: bool = typer.Option(None, "--preflight/--no-preflight", help="Dry-run on the gateway's CPU "
                                                                                   "first (clouds; on by default)."),
           sets: list[str] = typer.Option([], "--set", help="Another field of the deploy body, KEY=VALUE "
                                                             "(repeatable), e.g. --set alert_threshold=80."),
           yes: bool = typer.Option(False, "-y", "--yes", help="Do not ask before deploying."),
           detach: bool = DETACH_OPTION) -> None:
    """Show the estimate, ask before paying, deploy, and follow the job to its end (unless -d). Exit code: 0
    completed, 1 failed, 2 bad configuration or usage, 3 stopped, 4 budget exceeded, 5 gateway unreachable, 130
    detached with Ctrl-C (the job goes on: tunefleet jobs watch ID)."""
    with Gateway.open() as gateway:
        source, chosen = config_source(gateway, config)
        source.update(_dataset(gateway, dataset))
        body = deploy_body(provider, source, chosen, gpu=gpu, gpus=gpus, budget=budget, space=space, title=title,
                           preflight=preflight, max_per_hour=max_per_hour, extra=parse_sets(sets))
        answer = _estimate_before(gateway, provider, source, gpu)
        _confirm(provider, answer, yes)
        deployed = gateway.post(f"/api/training/deploy/{provider}", body, timeout=DEPLOY_TIMEOUT_S)
        job_id = deployed["job_id"]
        out.print(f"deployed job [bold]{job_id}[/] on {deployed['provider']}: {escape(deployed['message'])}",
                  highlight=False, soft_wrap=True)
        if detach:
            out.print(watch_hint(job_id), highlight=False)
            return
        steps = ((chosen.get("training") or {}).get("max_steps") or None) if isinstance(chosen, dict) else None
        raise typer.Exit(int(follow(gateway, job_id, total_steps=steps if isinstance(steps, int) else None)))


def _estimate_before(gateway: Gateway, provider: Provider, source: dict, gpu: str | None) -> dict | None:
    """The estimate for where the job goes; a refused configuration stops the deploy (exit 2), an estimate the
    gateway cannot make now (the hub away ...) only warns."""
    only = None if provider is Provider.AUTO else ESTIMATE_NAMES.get(provider, str(provider))
    try:
        answer = _estimate(gateway, {**source, "provider": only, "gpu_type": None if gpu == "auto" else gpu})
    except CliError as exc:
        if exc.code == ExitCode.BAD_INPUT:
            raise
        out.print(f"[yellow]no estimate[/]: {escape(exc.message)}", highlight=False, soft_wrap=True)
        return None
    show_estimate(answer)
    return answer
