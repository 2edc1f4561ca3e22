"""Users' code on TuneFleet's own machine (a local trainer, a preflight) runs under an OS user of that TuneFleet
user's own, when the server runs as root: it cannot read the data folder's keys and passwords, the uploads of
others, or another user's bundles, outputs and processes.

Each TuneFleet user gets a numeric uid (and a gid of the same number) from ``TUNEFLEET_TRAINER_UIDS``, allocated
once and kept in ``{home}/run/trainer-uids.json``; no account needs to exist in ``/etc/passwd``. The user's files
for a run (its bundle, its output folder, a home of its own for caches) are handed over to that uid before the run.

``TUNEFLEET_TRAINER_ISOLATION``: ``on`` requires it (a server not running as root, or whose trainer Python the
uids cannot run, refuses to start); ``auto`` (the default) uses it when possible and says why not otherwise;
``off`` runs users' code as the server's own user (a single-user machine).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunAs:
    uid: int
    home: Path

    def popen(self) -> dict:
        """``subprocess.Popen`` keywords: that uid and gid, and no supplementary group of the server's."""
        return {"user": self.uid, "group": self.uid, "extra_groups": []}


def others_can_reach(path: Path) -> str | None:
    """Why a process of another uid could not reach ``path`` (each folder above it must be searchable), or None."""
    for folder in reversed(path.resolve().parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return f"{folder} is not searchable by other users"
    return None


def others_can_use(path: Path) -> str | None:
    """Why a process of another uid could not run or read ``path``, or None when it can."""
    path = path.resolve()
    why = others_can_reach(path)
    if why is None and not path.stat().st_mode & stat.S_IROTH:
        why = f"{path} is not readable by other users"
    return why


def share_with_trainers(path: Path) -> None:
    """Make a model folder readable by every user's trainer (the data folder's ``models/`` is for everyone):
    transformers saves weights owner-only."""
    for entry in [path, *path.rglob("*")]:
        if not entry.is_symlink():
            entry.chmod(0o755 if entry.is_dir() else 0o644)


class TrainerUsers:
    def __init__(self, settings: Settings, python: str | None = None):
        self.settings = settings
        self.first, self.last = settings.trainer_uid_range
        self.enabled, why = self._decide(python or settings.trainer_python or sys.executable)
        if not self.enabled and why:
            if settings.trainer_isolation == "on":
                raise RuntimeError(f"TUNEFLEET_TRAINER_ISOLATION=on, but {why}")
            log.warning("users' code runs as this server's own user: %s (see 'Local jobs on a shared server' in "
                        "the README)", why)

    def _decide(self, python: str) -> tuple[bool, str | None]:
        mode = self.settings.trainer_isolation
        if mode == "off":
            return False, None
        if os.geteuid() != 0:
            return False, "the server does not run as root, so it cannot start processes as other users"
        for what in (Path(python), Path(__file__).resolve().parent.parent / "trainer" / "__main__.py"):
            why = others_can_use(what)
            if why:
                return False, (f"the trainer ({what}) cannot be run by other users: {why}; set "
                               "TUNEFLEET_TRAINER_PYTHON to a Python they can run")
        self.settings.home.mkdir(parents=True, exist_ok=True)
        why = others_can_reach(self.settings.home)
        if why:
            return False, f"the data folder cannot be reached by other users ({why}); move TUNEFLEET_HOME"
        return True, None

    def for_user(self, user_id: str) -> RunAs | None:
        """The uid ``user_id``'s code runs as (allocated on first use), with its home made; None when disabled."""
        if not self.enabled:
            return None
        uid = self._allocate(user_id)
        home = self.settings.home / "trainer-homes" / str(uid)
        if not home.exists():  # made once and given away; never walked again (the uid writes in it)
            home.mkdir(parents=True, mode=0o700)
            os.chown(home, uid, uid)
        self._searchable_parents(home)
        return RunAs(uid, home)

    def hand_over(self, run_as: RunAs | None, *paths: Path) -> None:
        """Make ``paths``, folders the server has just made and filled, the uid's own (recursively), readable by it
        alone; the folders above them inside the data folder searchable (not listable). Links are changed, never
        followed, and a file with several names is left alone."""
        if run_as is None:
            return
        for path in paths:
            path.mkdir(parents=True, exist_ok=True)
            self._searchable_parents(path)
            for _, _, files, folder_fd in os.fwalk(path, follow_symlinks=False):
                os.chown(folder_fd, run_as.uid, run_as.uid)
                os.chmod(folder_fd, 0o700)
                for name in files:
                    info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
                    if stat.S_ISLNK(info.st_mode) or info.st_nlink == 1:
                        os.chown(name, run_as.uid, run_as.uid, dir_fd=folder_fd, follow_symlinks=False)

    def _searchable_parents(self, path: Path) -> None:
        home = self.settings.home.resolve()
        for folder in path.resolve().parents:
            if not folder.is_relative_to(home):
                break
            with contextlib.suppress(OSError):
                mode = folder.stat().st_mode
                if not mode & stat.S_IXOTH:
                    folder.chmod(mode | stat.S_IXOTH)

    def _allocate(self, user_id: str) -> int:
        run = self.settings.home / "run"
        run.mkdir(parents=True, exist_ok=True)
        table = run / "trainer-uids.json"
        with open(run / "trainer-uids.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            uids: dict[str, int] = json.loads(table.read_text()) if table.exists() else {}
            if user_id not in uids:
                used = set(uids.values())
                free = next((u for u in range(self.first, self.last + 1) if u not in used), None)
                if free is None:
                    raise RuntimeError(f"TUNEFLEET_TRAINER_UIDS ({self.first}-{self.last}) has no uid left")
                uids[user_id] = free
                partial = table.with_suffix(".partial")
                partial.write_text(json.dumps(uids))
                partial.replace(table)
            return uids[user_id]
