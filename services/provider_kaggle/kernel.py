"""What a Kaggle job pushes: the fixed kernel script, its ``kernel-metadata.json``, and the job's private dataset.

The script is the same text for every job (no job data, no secret: Kaggle drops UI secrets on a pushed kernel
anyway). It finds the job's dataset under ``/kaggle/input`` and then either

* internet on: reads the dataset's ``env.json`` (signed URLs only) and runs ``trainer.bootstrap.START_SNIPPET``,
  which fetches the bundle (it holds the ingest token) and runs ``bootstrap.py``: reports are pushed; or
* internet off: copies the bundle the dataset carries (bootstrap, manifest, wheels, spec without ingest, data)
  and the wheelhouse, and runs ``bootstrap.py`` with ``TUNEFLEET_WHEELHOUSE``: nothing leaves the kernel, and the
  metrics spool travels in the output.

Either way the job folder is ``/tmp/tunefleet-job`` and its ``output`` is ``/kaggle/working/output``, the kernel's
output that ``collect`` brings back once the session ends.

Names: Kaggle slugs are lowercase letters, digits and hyphens, and a dataset slug has 6 to 50 characters, so the
resource name (``tunefleet-<installation>-<job uuid>-<attempt>``, 57+ characters) is written with the job's uuid
in base 36: ``tunefleet-<installation>-<25 base-36 digits>-<attempt>`` (46 to 50 characters), reversible, so
``find``, ``list_own`` and reconciliation read the job and attempt back. The kernel and its dataset share that
slug. A new kernel is named by its title, so the kernel's title IS the slug (any other title would resolve to
another slug, and the client warns); the user's ``notebook_title`` becomes the dataset's title.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from shared.providers import NAME_PREFIX
from trainer.bootstrap import START_SNIPPET

ENV_FILE = "env.json"
BUNDLE_FILES = ("bootstrap.py", "manifest.json", "spec.json", "data.jsonl")
WHEELHOUSE = "wheelhouse"
LICENSE = "other"
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_UUID_DIGITS = 25  # 36**25 > 2**128

KERNEL_SCRIPT = '''"""TuneFleet's Kaggle kernel: the same text for every job; the job is the attached dataset."""
import json, os, shutil, sys, zipfile

START_SNIPPET = ''' + repr(START_SNIPPET) + '''
WORK = "/tmp/tunefleet-job"
OUTPUT = "/kaggle/working/output"


def job_dataset():
    for root, dirs, files in sorted(os.walk("/kaggle/input")):
        if "env.json" in files or ("bootstrap.py" in files and "manifest.json" in files):
            return root
    sys.exit("[tunefleet] no TuneFleet job dataset is attached under /kaggle/input")


def unpack(folder, name):
    archive = os.path.join(folder, name + ".zip")
    if not os.path.isdir(os.path.join(folder, name)) and os.path.isfile(archive):
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(os.path.join(folder, name))


source = job_dataset()
os.makedirs(OUTPUT, exist_ok=True)
os.makedirs(WORK, exist_ok=True)
os.environ["TUNEFLEET_WORKDIR"] = WORK
if os.path.isfile(os.path.join(source, "env.json")):
    with open(os.path.join(source, "env.json"), encoding="utf-8") as f:
        env = json.load(f)
    env.pop("TUNEFLEET_HOLD_AFTER_EXIT", None)
    os.environ.update({str(k): str(v) for k, v in env.items()})
    if not os.path.lexists(os.path.join(WORK, "output")):
        os.symlink(OUTPUT, os.path.join(WORK, "output"))
    exec(compile(START_SNIPPET, "start_snippet", "exec"))
else:
    shutil.copytree(source, WORK, dirs_exist_ok=True)
    for name in ("wheels", "wheelhouse"):
        unpack(WORK, name)
    if not os.path.lexists(os.path.join(WORK, "output")):
        os.symlink(OUTPUT, os.path.join(WORK, "output"))
    os.environ["TUNEFLEET_WHEELHOUSE"] = "wheelhouse"
    os.chdir(WORK)
    os.execv(sys.executable, [sys.executable, "bootstrap.py"])
'''


def slug_for(installation: str, job_id: str, attempt: int) -> str:
    number, digits = uuid.UUID(job_id).int, []
    for _ in range(_UUID_DIGITS):
        number, digit = divmod(number, 36)
        digits.append(_DIGITS[digit])
    return f"{NAME_PREFIX}-{installation}-{''.join(reversed(digits))}-{attempt}"


def parse_slug(slug: str, installation: str) -> tuple[str, int] | None:
    """(job id, attempt) of a slug of ``installation``; None for any other."""
    prefix = f"{NAME_PREFIX}-{installation}-"
    if not slug.startswith(prefix):
        return None
    encoded, _, attempt = slug[len(prefix):].partition("-")
    if len(encoded) != _UUID_DIGITS or not attempt.isdigit() or any(c not in _DIGITS for c in encoded):
        return None
    number = int(encoded, 36)
    return (str(uuid.UUID(int=number)), int(attempt)) if number < 2**128 else None


def slug_of_name(name: str, installation: str) -> str:
    """The slug of a resource name (``shared.providers.resource_name``)."""
    prefix = f"{NAME_PREFIX}-{installation}-"
    job_id, _, attempt = name[len(prefix):].rpartition("-")
    return slug_for(installation, job_id, int(attempt))


def dataset_title(notebook_title: str) -> str:
    """Kaggle wants 6 to 50 characters."""
    title = " ".join(notebook_title.split())[:50]
    return title if len(title) >= 6 else f"{title} (TuneFleet job)"[:50]


def write_kernel(folder: Path, *, owner: str, slug: str, options: dict, dataset_ref: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.py").write_text(KERNEL_SCRIPT, encoding="utf-8")
    metadata = {
        "id": f"{owner}/{slug}", "title": slug, "code_file": "kernel.py", "language": "python",
        "kernel_type": "script", "is_private": bool(options.get("is_private", True)),
        "enable_gpu": bool(options.get("enable_gpu", True)), "enable_tpu": False,
        "enable_internet": bool(options.get("enable_internet", True)),
        "dataset_sources": [dataset_ref, *options.get("dataset_sources", [])],
        "model_sources": list(options.get("model_sources", [])), "kernel_sources": [], "competition_sources": []}
    if options.get("machine_shape"):
        metadata["machine_shape"] = options["machine_shape"]
    (folder / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    return folder


def write_dataset(folder: Path, *, owner: str, slug: str, title: str, env: dict[str, str] | None,
                  bundle_dir: Path | None = None, wheelhouse: Path | None = None) -> Path:
    """The job's dataset folder: ``env.json`` alone (internet on), or the bundle and the wheelhouse (off)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset-metadata.json").write_text(json.dumps(
        {"id": f"{owner}/{slug}", "title": title, "licenses": [{"name": LICENSE}]}), encoding="utf-8")
    if env is not None:
        (folder / ENV_FILE).write_text(json.dumps(env), encoding="utf-8")
        return folder
    assert bundle_dir is not None and wheelhouse is not None
    for name in BUNDLE_FILES:
        shutil.copyfile(bundle_dir / name, folder / name)
    shutil.copytree(bundle_dir / "wheels", folder / "wheels")
    shutil.copytree(wheelhouse, folder / WHEELHOUSE)
    return folder
