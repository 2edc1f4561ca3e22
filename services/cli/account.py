"""``tunefleet login`` and ``tunefleet logout``: the gateway URL and API key kept for the other commands, in a file
only its owner can read (``services.cli.credentials``). TUNEFLEET_URL and TUNEFLEET_API_KEY win over it."""

from __future__ import annotations

import os

import httpx
import typer

from . import credentials
from .client import CliError, ExitCode, Gateway, err, handled, unreachable
from .tables import out


@handled
def login(url: str = typer.Option(None, "--url", help="The gateway, e.g. http://127.0.0.1:8000 (default: "
                                                      "TUNEFLEET_URL, else the one stored, else that)."),
          key: str = typer.Option(None, "--key", help="Your API key (asked for, hidden, when left out).")) -> None:
    """Check an API key against the gateway and store both for the other commands."""
    url = credentials.resolve(url).url
    if not key:
        key = typer.prompt(f"API key for {url}", hide_input=True).strip()
    if not key:
        raise CliError("no API key given", ExitCode.BAD_INPUT)
    with Gateway(credentials.Credentials(url=url, key=key)) as gateway:
        try:
            gateway.call("GET", "/api/keys")
        except httpx.TransportError as exc:
            problem = unreachable(exc)
            err.print(f"[yellow]warning[/]: {problem.message}; storing the key unchecked", highlight=False,
                      soft_wrap=True)
    path = credentials.save(url, key)
    out.print(f"logged in to {url}; the key is kept in {path} (mode 0600)", highlight=False)
    for name in (credentials.URL_ENV, credentials.KEY_ENV):
        if os.environ.get(name):
            err.print(f"note: {name} is set and wins over the stored value", highlight=False)


@handled
def logout() -> None:
    """Forget the stored gateway URL and API key."""
    path = credentials.remove()
    out.print(f"removed {path}" if path else f"no stored credentials ({credentials.credentials_file()})",
              highlight=False)
    if os.environ.get(credentials.KEY_ENV):
        err.print(f"note: {credentials.KEY_ENV} is still set in this shell", highlight=False)
