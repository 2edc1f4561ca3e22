"""Where the CLI finds its gateway and API key: a command's own options, then ``TUNEFLEET_URL`` and
``TUNEFLEET_API_KEY``, then the file ``tunefleet login`` writes (``$XDG_CONFIG_HOME/tunefleet/credentials.json``,
else ``~/.config/tunefleet/credentials.json``), then the default URL. The file is made with mode 0600 from its
creation, in a folder of mode 0700; the key is never printed."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV, KEY_ENV = "TUNEFLEET_URL", "TUNEFLEET_API_KEY"


@dataclass(frozen=True)
class Credentials:
    url: str
    key: str | None
    url_from: str = "default"
    key_from: str | None = None

    def __repr__(self) -> str:  # the key stays out of tracebacks and logs
        hidden = "set" if self.key else "none"
        return f"Credentials(url={self.url!r}, key=<{hidden}>, url_from={self.url_from!r}, key_from={self.key_from!r})"


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "tunefleet"


def credentials_file(env: Mapping[str, str] | None = None) -> Path:
    return config_dir(env) / "credentials.json"


def read_file(path: Path) -> dict:
    """What ``tunefleet login`` stored; empty when there is no file or it cannot be read as a JSON object."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}


def resolve(url: str | None = None, key: str | None = None, env: Mapping[str, str] | None = None) -> Credentials:
    """Each setting from the first that has it: the argument, the environment, the credentials file, the default."""
    env = os.environ if env is None else env
    path = credentials_file(env)
    stored = read_file(path)
    url_from, key_from = "default", None
    for source, value in (("--url", url), (URL_ENV, env.get(URL_ENV)), (str(path), stored.get("url"))):
        if value:
            url, url_from = value, source
            break
    for source, value in (("--api-key", key), (KEY_ENV, env.get(KEY_ENV)), (str(path), stored.get("api_key"))):
        if value:
            key, key_from = value, source
            break
    return Credentials(url=(url or DEFAULT_URL).rstrip("/"), key=key or None, url_from=url_from, key_from=key_from)


def save(url: str, key: str, env: Mapping[str, str] | None = None) -> Path:
    """Store the URL and key, replacing what was there. The file never exists with a wider mode than 0600: it is
    written as a new file of that mode beside the old one, then renamed over it."""
    path = credentials_file(env)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".credentials-", suffix=".json", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"url": url.rstrip("/"), "api_key": key}, out)
            out.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove(env: Mapping[str, str] | None = None) -> Path | None:
    """Delete the credentials file; the path it had, or None when there was none."""
    path = credentials_file(env)
    try:
        path.unlink()
    except FileNotFoundError:
        return None
    return path
