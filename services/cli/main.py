"""The ``tunefleet`` command line."""

from __future__ import annotations

import asyncio
import logging
import warnings
from pathlib import Path

import typer
from rich.console import Console

from shared.db import create_pool
from shared.settings import Settings

from . import account as account_cli
from . import deploy as deploy_cli
from . import jobs as jobs_cli
from . import resources as resources_cli
from . import serving as serving_cli
from .embedded import EmbeddedNats, EmbeddedPostgres
from .stack import Stack, migrate_all

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")

app = typer.Typer(help="TuneFleet: fine-tune open LLMs on rented GPUs.", no_args_is_help=True)
keys = typer.Typer(help="API keys.")
app.add_typer(keys, name="keys")
dead = typer.Typer(help="Messages no service could handle, kept in NATS until replayed or discarded.")
app.add_typer(dead, name="dead-letters")
app.add_typer(serving_cli.serving, name="serving")
app.command()(serving_cli.serve)
app.command()(serving_cli.chat)
# Talking to a gateway by URL and key (TUNEFLEET_URL, TUNEFLEET_API_KEY, or `tunefleet login`).
app.command()(account_cli.login)
app.command()(account_cli.logout)
app.add_typer(resources_cli.datasets, name="datasets")
app.add_typer(resources_cli.configs, name="configs")
app.command()(deploy_cli.estimate)
app.command()(deploy_cli.deploy)
app.add_typer(jobs_cli.jobs, name="jobs")
app.add_typer(resources_cli.models, name="models")
app.command()(resources_cli.costs)
console = Console()


async def _new_key(database_url: str, user: str, *, only_if_none: bool = False) -> str | None:
    from services.gateway.users import create_api_key, has_any_key

    pool = await create_pool(database_url)
    try:
        if only_if_none and await has_any_key(pool):
            return None
        return await create_api_key(pool, user)
    finally:
        await pool.close()


@app.command()
def up(sandbox: bool = typer.Option(False, help="Also start local emulators of the clouds' APIs, which run "
                                             "the workloads on this machine: try every provider with no account.")
       ) -> None:
    """Start NATS and PostgreSQL (embedded unless TUNEFLEET_NATS_URL / TUNEFLEET_DATABASE_URL are set)
    and every service; Ctrl-C stops them all. Data stays in TUNEFLEET_HOME."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s up %(levelname)s %(message)s")
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    stack = Stack(Settings(), sandbox=sandbox)
    try:
        with console.status("starting TuneFleet…"):
            stack.up()
        key = asyncio.run(_new_key(stack.settings.require_database_url(), "admin", only_if_none=True))
        console.print(f"[bold green]TuneFleet is up[/] at {stack.gateway_url} (data in {stack.settings.home})")
        console.print(f"API docs: {stack.gateway_url}/docs")
        if key:
            console.print(f"First API key (user admin), shown once: [bold]{key}[/]", soft_wrap=True)
        if stack.sandbox_key:
            console.print(f"Sandbox: RunPod's, Lambda's, Kaggle's and the Hugging Face Hub's APIs are emulated here, "
                          "an account per user. Store your account's key with PUT /api/secrets/runpod and "
                          "/api/secrets/lambda ({\"api_key\": KEY}), /api/secrets/kaggle ({\"username\": NAME, "
                          "\"key\": KEY}) and /api/secrets/huggingface ({\"token\": KEY}) to deploy on them; "
                          "`tunefleet sandbox-key --user NAME` gives each user theirs (admin's is "
                          f"{stack.sandbox_key}).", soft_wrap=True)
        console.print("Press Ctrl-C to stop.", highlight=False)
        stack.supervise_until_signal()
    finally:
        console.print("stopping…")
        stack.stop()
        console.print("stopped.")


@app.command()
def migrate() -> None:
    """Apply every service's migrations to TUNEFLEET_DATABASE_URL, then exit (a deployment's one-shot job;
    `tunefleet up` does this itself). Safe to run again: applied migrations are skipped."""
    settings = Settings()
    if not settings.database_url:
        console.print("[red]TUNEFLEET_DATABASE_URL is not set[/]: migrate applies to an external PostgreSQL "
                      "(`tunefleet up` migrates its embedded one)")
        raise typer.Exit(2)
    asyncio.run(migrate_all(settings.database_url))
    console.print("migrations applied")


def _with_database(work):
    """Run ``work(pool)`` against the stack's database (the embedded one, started for the call, when no
    TUNEFLEET_DATABASE_URL is set)."""
    settings = Settings()
    postgres = None if settings.database_url else EmbeddedPostgres(settings.home / "postgres").start(attach=True)
    url = settings.database_url or postgres.url

    async def run():
        await migrate_all(url)
        pool = await create_pool(url)
        try:
            return await work(pool)
        finally:
            await pool.close()

    try:
        return asyncio.run(run())
    finally:
        if postgres is not None:
            postgres.stop()


def _with_nats(work):
    """Run ``work(nc)`` on the stack's NATS: TUNEFLEET_NATS_URL, else the embedded server a running
    ``tunefleet up`` started."""
    from shared.bus import connect

    settings = Settings()
    url = settings.nats_url
    if not url:
        running = EmbeddedNats.running(settings.home / "nats")
        if running is None:
            console.print(f"[red]no NATS:[/] start the stack (tunefleet up, data in {settings.home}) or set "
                          "TUNEFLEET_NATS_URL")
            raise typer.Exit(1)
        url = running.url

    async def run():
        nc = await asyncio.wait_for(connect(url, "tunefleet-cli"), 15)
        try:
            return await work(nc)
        finally:
            await nc.close()

    return asyncio.run(run())


@dead.command("list")
def dead_list(limit: int = typer.Option(100, help="At most this many, oldest first.")) -> None:
    """List dead letters: sequence, the subject and consumer that failed, when, after how many deliveries, why."""
    from shared.dead_letters import DeadLetters

    async def work(nc):
        letters = DeadLetters(nc)
        return await letters.count(), await letters.list(limit)

    count, letters = _with_nats(work)
    for letter in letters:
        typer.echo(f"{letter.seq}  {letter.subject}  consumer={letter.consumer}  deliveries={letter.deliveries}  "
                   f"{letter.failed_at}  {letter.error}")
    typer.echo(f"{count} dead letter(s)", err=True)


@dead.command("replay")
def dead_replay(seqs: list[int] = typer.Argument(None, help="Sequences from `tunefleet dead-letters list`."),
                every: bool = typer.Option(False, "--all", help="Replay every dead letter.")) -> None:
    """Publish dead letters again on their original subjects (once what made them fail is mended), and remove
    them. Handlers are idempotent: a subscriber that had handled one sees a harmless repeat."""
    from shared.dead_letters import DeadLetters

    if every == bool(seqs):
        console.print("[red]name the dead letters by sequence (see `tunefleet dead-letters list`), or pass --all")
        raise typer.Exit(2)

    async def work(nc):
        letters = DeadLetters(nc)
        wanted = seqs or [letter.seq for letter in await letters.list(10**6)]
        for seq in wanted:
            letter = await letters.replay(seq)
            typer.echo(f"replayed {seq} on {letter.subject}")
        return len(wanted)

    typer.echo(f"{_with_nats(work)} replayed", err=True)


@dead.command("discard")
def dead_discard(seqs: list[int] = typer.Argument(..., help="Sequences from `tunefleet dead-letters list`.")) -> None:
    """Remove dead letters for good."""
    from shared.dead_letters import DeadLetters

    async def work(nc):
        for seq in seqs:
            await DeadLetters(nc).discard(seq)
            typer.echo(f"discarded {seq}")

    _with_nats(work)


@keys.command("list")
def keys_list(user: str = typer.Option(None, "--user", help="Only this user's keys.")) -> None:
    """List API keys: id, user, the key's first characters, when made and revoked. Keys themselves are not kept."""
    from services.gateway.users import list_keys

    for row in _with_database(lambda pool: list_keys(pool, user)):
        revoked = f"revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else "live"
        typer.echo(f"{row['id']}  {row['user_id']}  {row['prefix']}…  {row['created_at']:%Y-%m-%d %H:%M}  {revoked}")


@keys.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id, as `tunefleet keys list` shows it.")) -> None:
    """Revoke an API key: requests with it are refused from now on."""
    import uuid

    from services.gateway.users import revoke_key

    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise typer.BadParameter(f"{key_id!r} is not a key id; `tunefleet keys list` shows them") from None
    if not _with_database(lambda pool: revoke_key(pool, parsed)):
        typer.echo(f"no live key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@keys.command("create")
def keys_create(user: str = typer.Option(..., "--user", help="User name; created when new.")) -> None:
    """Print a new API key for USER."""
    from services.gateway.users import create_api_key

    typer.echo(_with_database(lambda pool: create_api_key(pool, user)))


@app.command("sandbox-key")
def sandbox_key(user: str = typer.Option(..., "--user", help="The TuneFleet user the account is for.")) -> None:
    """Print the key of USER's own account on the emulated clouds of `tunefleet up --sandbox` (made on first use):
    a key sees only its own account's pods, instances and SSH keys."""
    from services.sandbox.accounts import account_key, key_file

    try:
        typer.echo(account_key(key_file(Settings().home), user))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command("tiny-model")
def tiny_model(out_dir: Path = typer.Argument(..., help="Folder to write the model and tokenizer into.")) -> None:
    """Write a small random Llama-style model with a locally trained tokenizer (nothing is downloaded)."""
    from shared.trainer_users import share_with_trainers
    from trainer.tiny_model import build_tiny_model

    path = build_tiny_model(str(out_dir))
    share_with_trainers(Path(path))  # any user's local trainer may train on it
    console.print(f"tiny model written to {path}")


@app.command()
def preflight(config_file: Path = typer.Argument(..., help="A TrainingConfig as JSON."),
              data_file: Path = typer.Argument(..., help="The JSONL data set."),
              steps: int = typer.Option(3, help="Steps to train on the tiny copy of the model.")) -> None:
    """Dry-run a configuration for a few steps on a tiny random model with the base model's architecture
    and tokenizer, on this CPU: data, template and config errors show in seconds."""
    import tempfile

    from pydantic import ValidationError

    from shared.config import TrainingConfig
    from shared.dataformats import DatasetError, validate_file
    from trainer.preflight import run_preflight

    try:
        config = TrainingConfig.model_validate_json(config_file.read_text())
        fmt = validate_file(str(data_file), config.data.format).format
    except (ValidationError, DatasetError, OSError) as exc:
        console.print(f"[red]refused:[/] {exc}")
        raise typer.Exit(1) from None
    with tempfile.TemporaryDirectory(prefix="tunefleet-preflight-") as work:
        report = run_preflight(config, str(data_file), fmt, steps=steps, work_dir=work,
                               printer=lambda line: console.print(line, highlight=False))
    if report.ok:
        console.print(f"[green]preflight ok[/]: {report.steps} steps of {report.method}, loss {report.final_loss}, "
                      f"{report.timings.get('total', 0):.1f}s")
        return
    console.print(f"[red]preflight failed[/] ({report.error_type}, field {report.error_field}): {report.error_message}")
    raise typer.Exit(1)


@app.command()
def demo(steps: int = typer.Option(120, help="Training steps."),
         keep_running: bool = typer.Option(False, help="Leave the stack up at the end until Ctrl-C.")) -> None:
    """Build a tiny model and data, start the stack, train on `local`, follow it, and ask the model."""
    from .demo import run_demo

    raise typer.Exit(run_demo(steps=steps, keep_running=keep_running, console=console))


if __name__ == "__main__":
    app()
