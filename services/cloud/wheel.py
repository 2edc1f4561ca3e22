"""The trainer as a wheel, built from the running installation, for remote workloads to install.

``tunefleet_trainer-<version>+g<hash>-py3-none-any.whl`` holds the ``trainer`` and ``shared`` packages exactly as
this installation imports them, and requires the trainer extra of the installed ``tunefleet`` distribution, each
requirement pinned to the version installed here when there is one (so a pod runs what this server was tested
with) — except torch, which keeps its range so that a stock image's CUDA build is reused. ``hash`` is
``trainer.bootstrap.tree_hash`` of the packed files: a machine whose Python already imports those very files needs
no install. Built once per content and cached under ``{home}/cache/``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import importlib.util
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from trainer.bootstrap import PACKAGES, tree_hash

DISTRIBUTION = "tunefleet"
WHEEL_NAME = "tunefleet_trainer"
#: Requirements a stock image already provides in a build made for its GPU: keep their range.
KEEP_RANGE = frozenset({"torch"})


@dataclass(frozen=True)
class TrainerWheel:
    path: Path
    tree_hash: str
    requirements: tuple[str, ...]


def package_dirs() -> dict[str, str]:
    dirs = {}
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"package {name} is not importable here; reinstall TuneFleet")
        dirs[name] = next(iter(spec.submodule_search_locations))
    return dirs


def trainer_requirements() -> tuple[str, ...]:
    """The trainer extra of the installed distribution, pinned to what is installed here where possible."""
    pinned = []
    for line in md.requires(DISTRIBUTION) or []:
        req = Requirement(line)
        if req.marker is None or not req.marker.evaluate({"extra": "trainer"}):
            continue
        req.marker = None
        if req.name not in KEEP_RANGE:
            try:
                installed = md.version(req.name)
            except md.PackageNotFoundError:
                installed = None
            if installed and req.specifier.contains(installed, prereleases=True):
                req.specifier = type(req.specifier)(f"=={installed}")
        pinned.append(str(req))
    return tuple(sorted(pinned))


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_trainer_wheel(cache_dir: Path) -> TrainerWheel:
    dirs = package_dirs()
    digest = tree_hash(dirs)
    requirements = trainer_requirements()
    version = f"{md.version(DISTRIBUTION)}+g{digest[:12]}"
    folder = cache_dir / "trainer-wheel" / digest[:16]
    path = folder / f"{WHEEL_NAME}-{version}-py3-none-any.whl"
    if path.exists():
        return TrainerWheel(path, digest, requirements)
    folder.mkdir(parents=True, exist_ok=True)
    files: list[tuple[str, bytes]] = []
    for name, root in sorted(dirs.items()):
        for current, subdirs, names in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            for filename in sorted(names):
                if filename.endswith(".py"):
                    full = os.path.join(current, filename)
                    rel = f"{name}/{os.path.relpath(full, root).replace(os.sep, '/')}"
                    files.append((rel, Path(full).read_bytes()))
    info = f"{WHEEL_NAME}-{version}.dist-info"
    metadata = "\n".join([
        "Metadata-Version: 2.1", f"Name: {WHEEL_NAME.replace('_', '-')}", f"Version: {version}",
        "Summary: TuneFleet's trainer, as run on a rented GPU", "Requires-Python: >=3.11",
        *(f"Requires-Dist: {r}" for r in requirements)]) + "\n"
    files.append((f"{info}/METADATA", metadata.encode()))
    files.append((f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: tunefleet\nRoot-Is-Purelib: true\n"
                                   b"Tag: py3-none-any\n"))
    record = [_record_line(n, d) for n, d in files] + [f"{info}/RECORD,,"]
    files.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode()))
    # Several bundles may be written at once (threads, replicas): each builds under its own name, and the
    # identical results replace one another atomically.
    with (tempfile.NamedTemporaryFile(dir=folder, suffix=".partial", delete=False) as partial,
          zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as wheel):
        for name, data in files:
            entry = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            wheel.writestr(entry, data, compress_type=zipfile.ZIP_DEFLATED)
    os.chmod(partial.name, 0o644)
    os.replace(partial.name, path)
    return TrainerWheel(path, digest, requirements)
