"""The emulated clouds' stock machines are as bare as the real images: a test that passes on them does not owe
it to TuneFleet being installed already."""

from __future__ import annotations

import subprocess

import pytest

from services.sandbox.machines import MachineImage, machine_env

PROBE = """
import importlib.util, sys
print(".".join(map(str, sys.version_info[:2])))
for name in ("trainer", "shared", "services", "pip", "torch"):
    print(name, importlib.util.find_spec(name) is not None)
"""


@pytest.mark.parametrize(("image", "version", "has_torch"), [("runpod", "3.11", True), ("lambda_stack", "3.10", False)])
def test_a_stock_machine_has_python_and_pip_but_nothing_of_tunefleet(stock_images, tmp_path, image, version,
                                                                     has_torch):
    machine = MachineImage(image, getattr(stock_images, image) / "bin")
    env = machine_env("probe", machine, stock_images, tmp_path, {})
    out = subprocess.run([str(stock_images.tools / "bash"), "-c", 'exec python3 -c "$0"', PROBE], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=120, check=True).stdout.split("\n")
    assert out[0] == version
    found = dict(line.split() for line in out[1:] if line)
    assert found == {"trainer": "False", "shared": "False", "services": "False", "pip": "True",
                     "torch": str(has_torch)}
