"""``python -m services.sandbox``: serve the cloud emulators for ``tunefleet up --sandbox``."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import uvicorn

from .lambda_cloud import LambdaEmulator
from .runpod import RunPodEmulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runpod-port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--lambda-port", type=int, required=True)
    parser.add_argument("--lambda-ssh-port", type=int, required=True)
    parser.add_argument("--key-file", type=Path, required=True, help="File holding the API key both accept.")
    args = parser.parse_args()
    key = args.key_file.read_text().strip()
    runpod = RunPodEmulator(args.workdir / "runpod", {key})
    lambda_cloud = LambdaEmulator(args.workdir / "lambda", {key}, ssh_port=args.lambda_ssh_port)
    asyncio.run(_serve([(runpod.app, args.runpod_port), (lambda_cloud.app, args.lambda_port)]))


async def _serve(apps) -> None:
    servers = [uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
               for app, port in apps]
    await asyncio.gather(*(server.serve() for server in servers))


if __name__ == "__main__":
    main()
