"""Provider services read a user's sealed credentials; only they hold the key that opens them."""

from __future__ import annotations

import asyncpg

from shared.credentials import CREDENTIALS
from shared.errors import ProviderError
from shared.sealing import unseal


class MissingCredentials(ProviderError):
    code = "missing_credentials"
    http_status = 422


async def load_credentials(pool: asyncpg.Pool, private_key: str, user_id: str, provider: str):
    sealed = await pool.fetchval("SELECT sealed FROM user_secrets WHERE user_id = $1 AND provider = $2",
                                 user_id, provider)
    if sealed is None:
        raise MissingCredentials(f"no {provider} credentials stored; add them with PUT /api/secrets/{provider}",
                                 field="provider")
    return CREDENTIALS[provider].model_validate(unseal(private_key, bytes(sealed)))
