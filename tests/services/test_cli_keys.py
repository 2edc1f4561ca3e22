"""`tunefleet keys create | list | revoke` against the stack's database."""

from __future__ import annotations

import os
import subprocess
import sys

from .conftest import gateway_client
from .test_gateway import auth


def cli(settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNEFLEET_DATABASE_URL": settings.require_database_url(),
           "TUNEFLEET_HOME": str(settings.home)}
    return subprocess.run([sys.executable, "-m", "services.cli.main", "keys", *args], env=env, capture_output=True,
                          text=True, timeout=120, check=check)


async def test_an_operator_lists_and_revokes_keys(migrated):
    key = cli(migrated, "create", "--user", "carol").stdout.strip()
    assert key.startswith("tf_")
    listed = cli(migrated, "list", "--user", "carol").stdout.strip().splitlines()
    assert len(listed) == 1 and "carol" in listed[0] and key[:8] in listed[0] and key not in listed[0]
    key_id = listed[0].split()[0]
    async with gateway_client(migrated) as client:
        assert (await client.get("/api/models", headers=auth(key))).status_code == 200
        assert cli(migrated, "revoke", key_id).stdout.strip() == f"revoked {key_id}"
        assert (await client.get("/api/models", headers=auth(key))).status_code == 401
    assert "revoked" in cli(migrated, "list").stdout
    again = cli(migrated, "revoke", key_id, check=False)
    assert again.returncode == 1 and "no live key" in again.stderr
    bad = cli(migrated, "revoke", "tf_abc", check=False)
    assert bad.returncode != 0 and "not a key id" in bad.stderr
