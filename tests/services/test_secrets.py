"""Provider credentials: sealed at rest, never returned, opened only with the providers' private key."""

from __future__ import annotations

import pytest

from shared.credential_store import MissingCredentials, load_credentials
from shared.sealing import SealingError, generate_keypair

from .conftest import gateway_client
from .test_gateway import auth

RUNPOD_KEY = "rp_SECRET_0123456789abcdef"


async def test_credentials_are_sealed_listed_without_values_and_opened_by_providers(migrated, pool, api_key,
                                                                                     other_key):
    async with gateway_client(migrated) as client:
        r = await client.put("/api/secrets/runpod", headers=auth(api_key), json={"api_key": RUNPOD_KEY})
        assert r.status_code == 204, r.text
        listed = (await client.get("/api/secrets", headers=auth(api_key))).json()
        assert [(s["provider"], s["fields"]) for s in listed] == [("runpod", ["api_key"])]
        assert RUNPOD_KEY not in (await client.get("/api/secrets", headers=auth(api_key))).text
        assert (await client.get("/api/secrets", headers=auth(other_key))).json() == []

    sealed = bytes(await pool.fetchval("SELECT sealed FROM user_secrets WHERE user_id = 'alice'"))
    assert RUNPOD_KEY.encode() not in sealed
    creds = await load_credentials(pool, migrated.secrets_private_key.get_secret_value(), "alice", "runpod")
    assert creds.api_key.get_secret_value() == RUNPOD_KEY
    assert RUNPOD_KEY not in repr(creds) and RUNPOD_KEY not in str(creds)
    with pytest.raises(SealingError):
        await load_credentials(pool, generate_keypair()[1], "alice", "runpod")  # the wrong key opens nothing
    with pytest.raises(MissingCredentials, match="PUT /api/secrets/lambda"):
        await load_credentials(pool, migrated.secrets_private_key.get_secret_value(), "alice", "lambda")


async def test_bad_credentials_name_the_field_without_echoing_the_value(migrated, api_key):
    async with gateway_client(migrated) as client:
        r = await client.put("/api/secrets/runpod", headers=auth(api_key), json={"api_key": "short"})
        assert r.status_code == 422
        assert r.json()["detail"]["field"] == "api_key" and "short" not in r.text
        r = await client.put("/api/secrets/runpod", headers=auth(api_key), json={"token": RUNPOD_KEY})
        assert r.status_code == 422 and RUNPOD_KEY not in r.text
        r = await client.put("/api/secrets/nowhere", headers=auth(api_key), json={"api_key": RUNPOD_KEY})
        assert r.status_code == 404
        r = await client.delete("/api/secrets/runpod", headers=auth(api_key))
        assert r.status_code == 404
