"""``python -m services.sandbox``: serve the cloud emulators for ``tunefleet up --sandbox``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import uvicorn

from .accounts import read_accounts
from .hf_hub import HubEmulator
from .images import sandbox_images
from .kaggle import KaggleEmulator
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
    parser.add_argument("--kaggle-port", type=int, required=True)
    parser.add_argument("--hf-port", type=int, required=True)
    parser.add_argument("--key-file", type=Path, required=True,
                        help="The accounts' API keys (accounts.key_file): each key is an account of its own on every "
                             "emulated cloud (on Kaggle and the Hub, the user name is the account's name and the key "
                             "its key or token); keys added while they run are taken within a second.")
    args = parser.parse_args()
    accounts = read_accounts(args.key_file)
    keys = set(accounts.values())
    print("building the emulated machine images (once; about a minute)...", file=sys.stderr, flush=True)
    stock = build_stock_images(args.workdir / "images")
    runpod = RunPodEmulator(args.workdir / "runpod", keys, stock=stock, images=sandbox_images(stock))
    lambda_cloud = LambdaEmulator(args.workdir / "lambda", keys, stock=stock, ssh_port=args.lambda_ssh_port)
    kaggle = KaggleEmulator(args.workdir / "kaggle", accounts, stock=stock)
    hub = HubEmulator(args.workdir / "hf", accounts, stock=stock)
    asyncio.run(_serve([(runpod.app, args.runpod_port), (lambda_cloud.app, args.lambda_port),
                        (mirror_app(stock), args.mirror_port), (kaggle.app, args.kaggle_port),
                        (hub.app, args.hf_port)], keys, accounts, args.key_file))


async def _serve(apps, keys: set[str], accounts: dict[str, str], key_file: Path) -> None:
    servers = [uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
               for app, port in apps]
    reload = asyncio.create_task(_follow_keys(keys, accounts, key_file))
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        reload.cancel()


async def _follow_keys(keys: set[str], accounts: dict[str, str], key_file: Path) -> None:
    """Keep ``keys`` (the set RunPod's and Lambda's emulators check) and ``accounts`` (user → key, Kaggle's and the
    Hub's) equal to the file: new accounts first, then gone ones."""
    while True:
        await asyncio.sleep(1.0)
        try:
            now = await asyncio.to_thread(read_accounts, key_file)
        except OSError:
            continue
        keys.update(now.values())
        keys.intersection_update(now.values())
        accounts.update(now)
        for gone in set(accounts) - set(now):
            accounts.pop(gone, None)


if __name__ == "__main__":
    main()
