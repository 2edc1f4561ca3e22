"""Property-based fuzzing of the public API with schemathesis: whatever a client sends, the gateway answers
with a client error or a success, never a server error."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_no_input_gets_a_server_error(stack, tmp_path):
    # A user of its own: the fuzzer may well revoke its key (DELETE /api/keys/{id} with an id it listed).
    key = stack.cli("keys", "create", "--user", "fuzzer").strip()
    st = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    run = subprocess.run(
        [st, "run", f"{stack.url}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25",
         "--workers", "1", "--seed", "20261128", "--exclude-path-regex", r".*/events$",
         "-H", f"Authorization: Bearer {key}", "--no-color"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Server error" not in run.stdout
