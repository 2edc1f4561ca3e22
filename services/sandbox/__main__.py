"""``python -m services.sandbox``: serve the cloud emulators for ``tunefleet up --sandbox``."""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from .runpod import RunPodEmulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runpod-port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--runpod-key-file", type=Path, required=True, help="File holding the accepted API key.")
    args = parser.parse_args()
    key = args.runpod_key_file.read_text().strip()
    emulator = RunPodEmulator(args.workdir / "runpod", {key})
    uvicorn.run(emulator.app, host="127.0.0.1", port=args.runpod_port, log_level="warning")


if __name__ == "__main__":
    main()
