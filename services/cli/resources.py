"""``tunefleet datasets``, ``configs``, ``models`` and ``costs``: what a user keeps on a gateway. Each is named by id,
unique id prefix or name (a data set by its file name, a configuration by its ``name``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import typer
from rich.markup import escape

from .client import CliError, ExitCode, Gateway, api_error, handled, report
from .jobs import JSON_OPTION
from .tables import money, out, print_json, short, table

datasets = typer.Typer(help="JSONL data sets: upload, list, show, delete.", no_args_is_help=True)
configs = typer.Typer(help="Saved training configurations: create, list, show, edit.", no_args_is_help=True)
models = typer.Typer(help="Registered models: list, show, download.", no_args_is_help=True)

REF = "id, unique id prefix or name"


@datasets.command("upload")
@handled
def upload_dataset(file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                               help="A JSONL file: text, chat, instruction or preference rows."),
                   as_json: bool = JSON_OPTION) -> None:
    """Upload and check a data set; a refused file lists each bad line with its problem."""
    with Gateway.open(timeout=600) as gateway, file.open("rb") as data:
        found = gateway.call("POST", "/api/training/datasets", files={"file": (file.name, data)}).json()
    if as_json:
        print_json(found)
        return
    out.print(f"uploaded data set [bold]{found['id']}[/]: {found['rows']} {found['format']} rows from "
              f"{escape(found['filename'])}", highlight=False)


def _dataset_rows(found: list[dict]):
    for d in found:
        yield short(d["id"]), escape(d["filename"]), d["format"], str(d["rows"]), d["created_at"][:19]


@datasets.command("list")
@handled
def list_datasets(as_json: bool = JSON_OPTION) -> None:
    """Your data sets, newest first."""
    with Gateway.open() as gateway:
        found = gateway.pages("/api/training/datasets", "datasets")
    if as_json:
        print_json(found)
        return
    out.print(table(("ID", "FILE", "FORMAT", "ROWS", "CREATED"), _dataset_rows(found)))


@datasets.command("show")
@handled
def show_dataset(dataset: str = typer.Argument(..., help=f"Data set {REF} (its file name)."),
                 as_json: bool = JSON_OPTION) -> None:
    """A data set and the statistics its check found."""
    with Gateway.open() as gateway:
        found = gateway.dataset(dataset)
    if as_json:
        print_json(found)
        return
    out.print(table(("ID", "FILE", "FORMAT", "ROWS", "CREATED"), _dataset_rows([found])))
    print_json(found["stats"])


@datasets.command("delete")
@handled
def delete_dataset(dataset: str = typer.Argument(..., help=f"Data set {REF}.")) -> None:
    """Delete a data set and its file (refused while an unfinished job trains on it)."""
    with Gateway.open() as gateway:
        found = gateway.dataset(dataset)
        gateway.delete(f"/api/training/datasets/{found['id']}")
    out.print(f"deleted data set {found['id']} ({escape(found['filename'])})", highlight=False)


def _parsed(text: str, where: str = "the configuration") -> dict:
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{where} is not JSON: {exc}", ExitCode.BAD_INPUT) from None
    if not isinstance(config, dict):
        raise CliError(f"{where}: a configuration is a JSON object, {{\"model\": ..., ...}}", ExitCode.BAD_INPUT)
    return config


def read_config(path: Path) -> dict:
    try:
        return _parsed(path.read_text(), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path} cannot be read: {exc}", ExitCode.BAD_INPUT) from None


@configs.command("create")
@handled
def create_config(file: Path = typer.Argument(..., exists=True, dir_okay=False, help="A TrainingConfig as JSON."),
                  name: str = typer.Option(None, "--name", help="Its name (else the file's `name`)."),
                  as_json: bool = JSON_OPTION) -> None:
    """Check and save a configuration; a refused one lists each field with its problem and the fix."""
    config = read_config(file)
    if name:
        config["name"] = name
    with Gateway.open() as gateway:
        saved = gateway.post("/api/training/configurations", config)
    if as_json:
        print_json(saved)
        return
    out.print(f"saved configuration [bold]{saved['id']}[/] ({escape(saved['config']['name'])})", highlight=False)


@configs.command("list")
@handled
def list_configs(as_json: bool = JSON_OPTION) -> None:
    """Your configurations, newest first."""
    with Gateway.open() as gateway:
        found = gateway.pages("/api/training/configurations", "configurations")
    if as_json:
        print_json(found)
        return
    out.print(table(("ID", "NAME", "BASE MODEL", "METHOD", "DATA", "UPDATED"), (
        (short(c["id"]), escape(c["config"]["name"]), escape(c["config"]["model"]["base_model"]),
         c["config"]["training"]["method"], short(c["config"]["data"].get("dataset_id")) if c["config"]["data"].get(
             "dataset_id") else escape(c["config"]["data"].get("train_path") or "-"), c["updated_at"][:19])
        for c in found)))


@configs.command("show")
@handled
def show_config(configuration: str = typer.Argument(..., help=f"Configuration {REF}."),
                as_json: bool = JSON_OPTION) -> None:
    """A configuration as JSON (``--json``: with its id, times and hub check)."""
    with Gateway.open() as gateway:
        found = gateway.configuration(configuration)
    print_json(found if as_json else found["config"])


@configs.command("edit")
@handled
def edit_config(configuration: str = typer.Argument(..., help=f"Configuration {REF}.")) -> None:
    """Edit a configuration in $EDITOR and save it (refused while an unfinished job was made from it)."""
    with Gateway.open() as gateway:
        found = gateway.configuration(configuration)
        original = text = json.dumps(found["config"], indent=2) + "\n"
        while True:
            edited = click.edit(text, extension=".json")  # what typer.edit was; typer 0.29 no longer re-exports it
            if edited is None or edited.strip() == original.strip():
                if text != original:
                    raise CliError("not saved", ExitCode.FAILED)
                out.print("no change")
                return
            text = edited
            try:
                saved = gateway.put(f"/api/training/configurations/{found['id']}", _parsed(edited))
                break
            except CliError as exc:
                if not sys.stdin.isatty():
                    raise
                report(exc)
                if not typer.confirm("Edit again?", default=True):
                    raise CliError("not saved", ExitCode.BAD_INPUT) from None
    out.print(f"saved configuration {saved['id']} ({escape(saved['config']['name'])})", highlight=False)


@models.command("list")
@handled
def list_models(as_json: bool = JSON_OPTION) -> None:
    """Your registered models, newest first."""
    with Gateway.open() as gateway:
        found = gateway.pages("/api/models")
    if as_json:
        print_json(found)
        return
    out.print(table(("ID", "NAME", "VERSION", "BASE MODEL", "METHOD", "LOSS", "COST", "PROVIDER", "JOB", "CREATED"), (
        (short(m["id"]), escape(m["name"]), str(m.get("version", 1)), escape(m["base_model"]), m["method"],
         "-" if m.get("final_loss") is None else f"{m['final_loss']:.4f}", money(m.get("cost_usd")), m["provider"],
         short(m["job_id"]), m["created_at"][:19]) for m in found)))


@models.command("show")
@handled
def show_model(model: str = typer.Argument(..., help=f"Model {REF}, or its job's id.")) -> None:
    """A registered model, as JSON."""
    with Gateway.open() as gateway:
        print_json(gateway.model(model))


@models.command("download")
@handled
def download_model(model: str = typer.Argument(..., help=f"Model {REF}, or its job's id."),
                   output: Path = typer.Option(None, "-o", "--output", help="The file to write (default: the "
                                                                            "gateway's name for it, here)."),
                   merged: bool = typer.Option(False, "--merged", help="The base with the adapter merged in."),
                   checkpoint: str = typer.Option(None, "--checkpoint", help="One of the job's checkpoints, e.g. "
                                                                             "checkpoints/checkpoint-20."),
                   export: str = typer.Option(None, "--export", help="A finished export: merged or gguf-<f32|f16|"
                                                                     "q8_0>.")) -> None:
    """Download a model's files: a tar of the adapter (with its tokenizer), the merged model, a checkpoint, or an
    export's file."""
    with Gateway.open(timeout=600) as gateway:
        found = gateway.model(model)
        params = {k: v for k, v in (("merged", merged or None), ("checkpoint", checkpoint), ("export", export)) if v}
        with gateway.http.stream("GET", f"/api/models/{found['id']}/download", params=params) as response:
            if response.status_code != 200:
                response.read()
                raise api_error(response)
            target = output or Path(_filename(response) or f"{found['name']}-v{found.get('version', 1)}.tar")
            partial = target.with_name(target.name + ".part")
            size = 0
            with partial.open("wb") as sink:
                for chunk in response.iter_bytes(1 << 20):
                    sink.write(chunk)
                    size += len(chunk)
            partial.replace(target)
    out.print(f"wrote {target} ({size / 1e6:.1f} MB)", highlight=False)


def _filename(response) -> str | None:
    import email.message

    disposition = response.headers.get("content-disposition")
    if not disposition:
        return None
    message = email.message.Message()
    message["content-disposition"] = disposition
    name = message.get_filename()
    return Path(name).name if name else None


@handled
def costs(start: str = typer.Option(None, "--from", help="ISO date or time (UTC); 30 days before --to by default."),
          end: str = typer.Option(None, "--to", help="ISO date or time, exclusive; now by default."),
          group_by: str = typer.Option("provider", "--by", help="provider, day or job."),
          as_json: bool = JSON_OPTION) -> None:
    """What your jobs cost over a period (GET /api/costs): finished jobs at their final cost, running ones so far."""
    with Gateway.open() as gateway:
        report = gateway.get("/api/costs", **{"from": start, "to": end, "group_by": group_by})
    if as_json:
        print_json(report)
        return
    out.print(table((group_by.upper(), "NAME", "STATUS", "JOBS", "RUNNING", "COST"), (
        (escape(g["key"]), escape(g.get("name") or ""), g.get("status") or "", str(g["jobs"]), str(g["running"]),
         money(g["cost_usd"])) for g in report["groups"]), title=f"{report['from'][:19]} to {report['to'][:19]}"))
    out.print(f"total {money(report['total_usd'])} ({report['currency']}) over {report['jobs']} job(s)",
              highlight=False)
