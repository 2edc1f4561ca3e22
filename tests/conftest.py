"""Shared fixtures: a real PostgreSQL (pgserver) for the session, a fresh database and a fresh NATS
server with JetStream for each test that asks for them."""

from __future__ import annotations

import logging
import uuid
import warnings
from pathlib import Path

import pytest

from services.cli.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from shared.settings import Settings

# The stack of processes and the emulated clouds: one per session, for the end-to-end and the contract suites.
from tests.cloudstack import (  # noqa: F401
    alice,
    hf_hub,
    kaggle_cloud,
    lambda_cloud,
    mailbox,
    mirror,
    ollama,
    runpod,
    stack,
    stock_images,
)

warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
logging.getLogger("pgserver").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory) -> EmbeddedPostgres:
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data").start()
    yield server
    server.stop()


@pytest.fixture
def database_url(postgres: EmbeddedPostgres) -> str:
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def nats_server(tmp_path: Path) -> EmbeddedNats:
    server = EmbeddedNats(tmp_path / "nats", port=free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture(scope="session")
def sealing_keys() -> tuple[str, str]:
    from shared.sealing import generate_keypair

    return generate_keypair()


@pytest.fixture
def settings(tmp_path: Path, database_url: str, nats_url: str, sealing_keys) -> Settings:
    return Settings(home=tmp_path / "home", nats_url=nats_url, database_url=database_url,
                    secret_key="test-secret-key-0123456789-abcdefghij", ingest_port=free_port(), stop_grace_seconds=5,
                    secrets_public_key=sealing_keys[0], secrets_private_key=sealing_keys[1],
                    model_dirs=[Path("/models")])


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A small random Llama-style model with a locally trained tokenizer, built once per session."""
    from trainer.tiny_model import build_tiny_model

    return build_tiny_model(str(tmp_path_factory.mktemp("tiny-model") / "model"))


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    """A random LlamaForSequenceClassification with one score, saved with the tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.num_labels = 1
    torch.manual_seed(1)
    out = str(tmp_path_factory.mktemp("tiny-reward") / "model")
    LlamaForSequenceClassification(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out
