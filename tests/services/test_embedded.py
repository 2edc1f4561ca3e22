"""The embedded NATS and PostgreSQL ask for the passwords kept in the data folder, and a second process on the same
data folder uses the running server instead of stopping it."""

from __future__ import annotations

import stat

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
    with pytest.raises(RuntimeError, match="already run by another TuneFleet stack"):
        fake_owner = postgres.data_dir.with_name(postgres.data_dir.name + ".owner")
        mine = fake_owner.read_text()
        fake_owner.write_text("1")  # pid 1 is alive and is not this process
        try:
            EmbeddedPostgres(postgres.data_dir).start()
        finally:
            fake_owner.write_text(mine)


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
