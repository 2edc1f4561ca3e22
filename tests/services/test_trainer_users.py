"""On a server run as root, a local job's trainer runs under a uid of its user's own: it trains, and it cannot read
the data folder's keys, the uploads, or another user's files. Runs where it can: as root, with this checkout and its
virtual environment readable by other users (the interpreter is copied to a place they can reach)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import uuid
from pathlib import Path

import pytest
from faststream.nats import NatsBroker

from services.cli.stack import secret_key
from services.sandbox.machines import _copy_python
from services.scheduler.subscribers import wire as wire_scheduler
from shared.bus import publish
from shared.trainer_users import TrainerUsers, others_can_use

from .conftest import running_service, wire_local
from .test_provider_local import deploy, running_ingest
from .test_scheduler import wait_status

REPO = Path(__file__).resolve().parents[2]
SITE = Path(sysconfig.get_paths()["purelib"])
UNREACHABLE = others_can_use(REPO / "trainer" / "__main__.py") or others_can_use(SITE / "torch" / "__init__.py")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or UNREACHABLE is not None,
                                reason=f"needs root and a checkout other users can read ({UNREACHABLE})")


@pytest.fixture(scope="module")
def world() -> Path:
    """A folder every user can reach, with a Python they can run (this interpreter, copied) on this checkout."""
    folder = Path(tempfile.mkdtemp(prefix="tunefleet-isolation-", dir="/tmp"))
    folder.chmod(0o755)
    _copy_python(Path(sys.base_prefix), folder / "python")
    wrapper = folder / "python.sh"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}:{SITE}" LD_LIBRARY_PATH="{folder}/python/lib" '
                       f'exec "{folder}/python/bin/python3" "$@"\n')
    wrapper.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def as_uid(uid: int, python: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], user=uid, group=uid, extra_groups=[], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})


def reads(path: Path) -> str:
    return f"open({str(path)!r}).read()"


async def test_a_local_trainer_runs_as_its_users_uid_and_reads_nothing_else(migrated, pool, nats_url, dataset,
                                                                              tiny_model_dir, world):
    model = world / "models" / "tiny"
    shutil.copytree(tiny_model_dir, model)
    for path in [model, *model.rglob("*")]:  # an operator's model folder: readable by the trainers' uids
        path.chmod(0o755 if path.is_dir() else 0o644)
    home = world / "home"
    settings = migrated.model_copy(update={"home": home, "model_dirs": [world / "models"], "trainer_isolation": "on",
                                           "trainer_python": str(world / "python.sh")})
    key_file = home / "secret_key"
    secret_key(home)
    upload = home / "datasets" / "someone-elses.jsonl"
    upload.parent.mkdir(parents=True)
    upload.write_text('{"text": "private"}\n')
    upload.chmod(0o600)
    job_id = str(uuid.uuid4())
    async with running_ingest(settings), running_service("scheduler", wire_scheduler, settings), \
            running_service("provider_local", wire_local, settings):
        broker = NatsBroker(nats_url)
        await broker.start()
        await publish(broker, deploy(job_id, str(model), dataset, 4))
        await wait_status(pool, job_id, "running", timeout=120)
        for _ in range(600):
            job = await pool.fetchrow("SELECT status, status_reason, log_tail FROM jobs WHERE id = $1", job_id)
            if job["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.2)
        assert job["status"] == "completed", dict(job)
        await broker.stop()
    uids = json.loads((home / "run" / "trainer-uids.json").read_text())
    alice = uids["alice"]
    assert 200_000 <= alice <= 265_535
    output = home / "artifacts" / job_id / "attempt-1"
    assert (output / "result.json").stat().st_uid == alice  # written by the trainer, as alice's uid
    assert stat.S_IMODE(output.stat().st_mode) == 0o700
    assert await pool.fetchval("SELECT count(*) FROM metric_points WHERE job_id = $1", job_id) > 0

    python = world / "python.sh"
    assert as_uid(alice, python, reads(output / "result.json")).returncode == 0
    bob_folder = home / "artifacts" / str(uuid.uuid4()) / "attempt-1"
    users = TrainerUsers(settings)
    users.hand_over(users.for_user("bob"), bob_folder)
    (bob_folder / "adapter.bin").write_text("bob's weights")
    for forbidden in (key_file, upload, home / "nats" / "password", bob_folder / "adapter.bin",
                      home / "bundles" / job_id / "attempt-1" / "spec.json"):
        if not forbidden.exists() and forbidden.name == "password":
            continue  # no embedded NATS in this test
        probe = as_uid(alice, python, reads(forbidden))
        if forbidden.name == "spec.json":
            assert probe.returncode == 0  # alice's own bundle
        else:
            assert "PermissionError" in probe.stderr, (forbidden, probe.stdout, probe.stderr)
