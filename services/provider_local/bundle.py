"""A job bundle on local disk: the data, the JobSpec as JSON, and the folder the trainer writes to."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from shared.events import ProvisionJob
from shared.jobspec import JobSpec, TrainerResult


@dataclass(frozen=True)
class Bundle:
    root: Path

    @property
    def spec_path(self) -> Path:
        return self.root / "spec.json"

    @property
    def log_path(self) -> Path:
        return self.root / "train.log"

    @property
    def output_dir(self) -> Path:
        return self.root / "output"

    @property
    def spool_path(self) -> Path:
        """Where the trainer keeps metric batches ingest has not acknowledged yet."""
        return self.output_dir / "metrics-spool.jsonl"

    def has_spooled_metrics(self) -> bool:
        try:
            return self.spool_path.stat().st_size > 0
        except FileNotFoundError:
            return False

    @property
    def result_path(self) -> Path:
        return self.output_dir / "result.json"

    def read_result(self) -> TrainerResult | None:
        try:
            return TrainerResult.model_validate_json(self.result_path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_bytes))
                return f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def write_bundle(jobs_dir: Path, cmd: ProvisionJob, *, ingest_url: str | None, ingest_token: str) -> Bundle:
    """Lay out the bundle of one attempt. The spec file is readable by its owner only: it holds the token."""
    bundle = Bundle(jobs_dir / cmd.job_id / f"attempt-{cmd.attempt}")
    bundle.output_dir.mkdir(parents=True, exist_ok=True)
    data_path = bundle.root / "data.jsonl"
    shutil.copyfile(cmd.dataset_path, data_path)
    spec = JobSpec(
        job_id=cmd.job_id, attempt=cmd.attempt, config=cmd.config, dataset_path=str(data_path),
        dataset_format=cmd.dataset_format, output_dir=str(bundle.output_dir), ingest_url=ingest_url,
        ingest_token=ingest_token, resume_from_checkpoint=cmd.resume_from_checkpoint,
    )
    fd = os.open(bundle.spec_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(spec.model_dump_json(indent=2))
    return bundle
