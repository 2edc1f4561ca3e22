"""The trainer wheel that remote workloads install, built from this installation."""

from __future__ import annotations

import zipfile
from concurrent.futures import ThreadPoolExecutor

from services.cloud.wheel import build_trainer_wheel, package_dirs
from trainer.bootstrap import tree_hash


def test_concurrent_builds_of_one_wheel_all_succeed_and_agree(tmp_path):
    """Bundles of several jobs are written at once; their wheel builds must not trip over one another."""
    with ThreadPoolExecutor(6) as pool:
        wheels = list(pool.map(lambda _: build_trainer_wheel(tmp_path), range(6)))
    assert len({w.path for w in wheels}) == 1
    wheel = wheels[0]
    assert wheel.tree_hash == tree_hash(package_dirs())
    assert [p.name for p in wheel.path.parent.iterdir()] == [wheel.path.name]  # no partial files left
    with zipfile.ZipFile(wheel.path) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        metadata = next(archive.read(n).decode() for n in names if n.endswith("/METADATA"))
    assert "trainer/bootstrap.py" in names and "shared/jobspec.py" in names
    assert not any(n.startswith("services/") for n in names)
    assert "Requires-Python: >=3.11" in metadata and "Requires-Dist: torch" in metadata
