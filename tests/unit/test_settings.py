"""Settings that would make the server unsafe are refused when it starts, with the fix in the message."""

from __future__ import annotations

import secrets

import pytest
from pydantic import ValidationError

from shared.settings import Settings


@pytest.mark.parametrize("key", ["k-weak", "changeme-please", "k" * 48, "0123456789" * 3, "abab" * 20])
def test_a_short_or_repetitive_secret_key_is_refused_with_how_to_make_one(key, tmp_path):
    with pytest.raises(ValidationError) as refused:
        Settings(home=tmp_path, secret_key=key)
    message = str(refused.value)
    assert "TUNEFLEET_SECRET_KEY is too weak" in message and "openssl rand -base64 48" in message
    assert key not in message  # the refusal does not echo the key back


def test_a_random_key_and_no_key_are_taken(tmp_path, monkeypatch):
    key = secrets.token_urlsafe(48)
    assert Settings(home=tmp_path, secret_key=key).require_secret_key() == key
    monkeypatch.setenv("TUNEFLEET_SECRET_KEY", key)
    assert Settings(home=tmp_path).require_secret_key() == key
    monkeypatch.delenv("TUNEFLEET_SECRET_KEY")
    assert Settings(home=tmp_path).secret_key is None  # tunefleet up makes one in its data folder
