"""``python -m services.sandbox``: serve the cloud emulators for ``tunefleet up --sandbox``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import uvicorn

from .images import sandbox_images
from .lambda_cloud import LambdaEmulator
from .machines import build_stock_images
from .mirror import mirror_app
from .runpod import RunPodEmulator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runpod-port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--lambda-port", type=int, required=True)
    parser.add_argument("--lambda-ssh-port", type=int, required=True)
    parser.add_argument("--mirror-port", type=int, required=True)
    parser.add_argument("--key-file", type=Path, required=True, help="File holding the API key both accept.")
    args = parser.parse_args()
    key = args.key_file.read_text().strip()
    print("building the emulated machine images (once; about a minute)...", file=sys.stderr, flush=True)
    stock = build_stock_images(args.workdir / "images")
    runpod = RunPodEmulator(args.workdir / "runpod", {key}, stock=stock, images=sandbox_images(stock))
    lambda_cloud = LambdaEmulator(args.workdir / "lambda", {key}, stock=stock, ssh_port=args.lambda_ssh_port)
    asyncio.run(_serve([(runpod.app, args.runpod_port), (lambda_cloud.app, args.lambda_port),
                        (mirror_app(stock), args.mirror_port)]))


async def _serve(apps) -> None:
    servers = [uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
               for app, port in apps]
    await asyncio.gather(*(server.serve() for server in servers))


if __name__ == "__main__":
    main()
