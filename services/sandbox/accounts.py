"""The sandbox's cloud accounts: one per TuneFleet user, each with an API key of its own, so that on the emulated
clouds, as on the real ones, a user's key shows only that user's pods, instances and SSH keys.

The keys live in ``{home}/sandbox/accounts`` (owner-only), a line ``<user> <key>`` each; ``tunefleet sandbox-key
--user NAME`` adds one (or prints the one the user has), and the running emulators take it within a second.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
from pathlib import Path

USER = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def key_file(home: Path) -> Path:
    return home / "sandbox" / "accounts"


def read_accounts(path: Path) -> dict[str, str]:
    """user → key."""
    accounts = {}
    for line in path.read_text().splitlines():
        user, _, key = line.strip().partition(" ")
        if user and key:
            accounts[user] = key
    return accounts


def read_keys(path: Path) -> set[str]:
    return set(read_accounts(path).values())


def account_key(path: Path, user: str) -> str:
    """The sandbox key of ``user``'s account, made on first use."""
    if not USER.match(user):
        raise ValueError(f"user {user!r}: 1 to 64 letters, digits, '_', '.', '@' or '-'")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:  # two callers at once must not lose a key
        fcntl.flock(lock, fcntl.LOCK_EX)
        accounts = read_accounts(path) if path.exists() else {}
        if user not in accounts:
            accounts[user] = "sandbox-" + secrets.token_urlsafe(16)
            partial = path.with_name(path.name + ".partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("".join(f"{u} {k}\n" for u, k in accounts.items()))
            partial.replace(path)
        return accounts[user]
