"""Where ``tunefleet up``'s supervisor writes what it sees of the services it started, for ``/healthz``."""

from __future__ import annotations

import json
from pathlib import Path


def status_path(home: Path) -> Path:
    return home / "run" / "supervisor.json"


def read_status(home: Path) -> dict:
    """What the supervisor last wrote, or {} when none runs (services started some other way)."""
    try:
        return json.loads(status_path(home).read_text())
    except (OSError, ValueError):
        return {}
