"""The embedded NATS and PostgreSQL ask for the passwords kept in the data folder, and a second process on the same
data folder uses the running server instead of stopping it."""

from __future__ import annotations

import stat
import subprocess
import sys

import asyncpg
import nats
import pytest
from nats.errors import Error as NatsError

from services.cli.embedded import EmbeddedNats, EmbeddedPostgres, free_port


async def test_nats_refuses_a_client_without_the_password(tmp_path):
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    try:
        password_file = tmp_path / "nats" / "password"
        assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "nats" / "nats.conf").stat().st_mode) == 0o600
        nc = await nats.connect(server.url)
        assert nc.is_connected
        await nc.close()
        for url in (f"nats://127.0.0.1:{server.port}", f"nats://tunefleet:wrong@127.0.0.1:{server.port}"):
            with pytest.raises(NatsError, match="Authorization Violation"):
                await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
        assert EmbeddedNats.running(tmp_path / "nats").url == server.url  # what the CLI finds
    finally:
        server.stop()
    assert EmbeddedNats.running(tmp_path / "nats") is None


async def test_postgresql_refuses_a_client_without_the_password_and_a_second_user_attaches(postgres, tmp_path):
    assert stat.S_IMODE(postgres.data_dir.with_name(postgres.data_dir.name + ".password").stat().st_mode) == 0o600
    conn = await asyncpg.connect(postgres.url)
    assert await conn.fetchval("SELECT current_database()") == "tunefleet"
    await conn.close()
    for url in (postgres.url.replace(postgres.password, "wrong"), postgres.url.replace(f":{postgres.password}", "")):
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            await asyncpg.connect(url)
    # A CLI call on the same data folder uses the running server and leaves it running.
    second = EmbeddedPostgres(postgres.data_dir).start(attach=True)
    assert second.process is None and second.url == postgres.url
    second.stop()
    assert postgres.process.poll() is None
    # Another process that runs a stack on a data folder holds it: a second stack there is refused.
    other = tmp_path / "pg"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from services.cli.embedded import _claim; _claim(Path(sys.argv[1]), 'x'); "
                               "print('held', flush=True); time.sleep(60)", str(tmp_path / "pg.owner")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=r"already run by another TuneFleet stack \(pid \d+\)"):
            EmbeddedPostgres(other).start()
    finally:
        holder.kill()
        holder.wait()


def test_a_data_folder_made_without_passwords_gets_one(tmp_path):
    """Data folders made before passwords (pgserver's initdb, trust) are converted at start."""
    import pgserver

    old = pgserver.get_server(tmp_path / "pg", cleanup_mode=None)
    old.psql("CREATE DATABASE tunefleet;")
    server = EmbeddedPostgres(tmp_path / "pg").start()  # stops pgserver's server, runs its own
    try:
        hba = (tmp_path / "pg" / "pg_hba.conf").read_text().split("\n")
        assert not [line for line in hba if line.strip().endswith("trust") and not line.startswith("#")]
        assert not server._connects_without_password()
        assert server.psql("tunefleet", "SELECT 1").strip() == "1"
    finally:
        server.stop()


def test_two_embedded_nats_without_a_port_take_free_ones_and_a_taken_port_that_was_set_is_refused(tmp_path):
    import socket

    first = EmbeddedNats(tmp_path / "a").start()
    second = EmbeddedNats(tmp_path / "b").start()
    try:
        assert first.port != second.port
        assert EmbeddedNats.running(tmp_path / "a").port == first.port
        assert EmbeddedNats.running(tmp_path / "b").port == second.port
    finally:
        first.stop()
        second.stop()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} \\(TUNEFLEET_NATS_PORT\\) is in use"):
            EmbeddedNats(tmp_path / "c", port=port).start()


async def test_tunefleet_migrate_applies_every_services_migrations_once(database_url):
    import asyncio

    from typer.testing import CliRunner

    from services.cli.main import app

    def run():
        return CliRunner().invoke(app, ["migrate"], env={"TUNEFLEET_DATABASE_URL": database_url})

    first = await asyncio.to_thread(run)
    assert first.exit_code == 0, first.output
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {r["tablename"] for r in rows}
        applied = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await conn.close()
    assert {"jobs", "datasets", "metric_points", "job_log_lines"} <= tables
    again = await asyncio.to_thread(run)
    assert again.exit_code == 0, again.output
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == applied
    finally:
        await conn.close()
