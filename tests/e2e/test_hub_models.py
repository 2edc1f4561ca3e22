"""The specification's first step, model selection, against the Hub: a configuration's hub base model is checked
when it is saved, with the user's stored token, through the real ``huggingface_hub`` client against the Hub
emulator. What the Hub said is kept with the configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import HF_TOKEN, HF_USER

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def hub_models(hf_hub, tiny_model_dir, alice):
    """Model repos on the emulated Hub: a public one, a gated one, another account's private one, and an encoder."""
    files = {name: Path(tiny_model_dir, name).read_bytes()
             for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors")}
    hf_hub.add_model("tiny-org/tiny-llama", files)
    hf_hub.add_model("tiny-org/gated-llama", files, gated=True)
    hf_hub.add_model("tiny-org/granted-llama", files, gated=True)
    hf_hub.grant("tiny-org/granted-llama", HF_USER)
    hf_hub.add_model("bob/private-llama", files, private=True)
    encoder = json.dumps({"architectures": ["BertModel"], "model_type": "bert"}).encode()
    hf_hub.add_model("tiny-org/an-encoder", {**files, "config.json": encoder})
    assert alice.put("/api/secrets/huggingface", json={"token": HF_TOKEN}).status_code == 204
    return files


def save(client, base_model: str, **model):
    body = {"name": "hub", "model": {"base_model": base_model, "max_seq_length": 64, **model},
            "training": {"max_steps": 2}}
    return client.post("/api/training/configurations", json=body)


def test_a_hub_model_is_checked_and_its_revision_architecture_and_size_are_recorded(stack, alice, hub_models):
    r = save(alice, "tiny-org/tiny-llama")
    assert r.status_code == 201, r.text
    check = r.json()["hub_check"]
    assert check["status"] == "verified" and check["architecture"] == "LlamaForCausalLM"
    assert len(check["revision"]) == 40 and check["gated"] is False and check["parameters"] > 0
    assert alice.get(f"/api/training/configurations/{r.json()['id']}").json()["hub_check"] == check


def test_a_gated_model_the_token_may_read_is_verified_and_marked_gated(stack, alice, hub_models):
    r = save(alice, "tiny-org/granted-llama")
    assert r.status_code == 201, r.text
    assert r.json()["hub_check"]["status"] == "verified" and r.json()["hub_check"]["gated"] is True


@pytest.mark.parametrize(("repo", "words", "field"), [
    ("tiny-org/no-such-model", "is not on the Hub", "model.base_model"),
    ("tiny-org/gated-llama", "is gated", "model.base_model"),
    ("bob/private-llama", "is not on the Hub, or it is private", "model.base_model"),
    ("tiny-org/an-encoder", "no causal-LM config", "model.base_model"),
])
def test_a_model_the_hub_refuses_is_a_422_naming_the_field_and_the_fix(stack, alice, hub_models, repo, words, field):
    r = save(alice, repo)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail["field"] == field and words in detail["message"]
    assert HF_TOKEN not in r.text and HF_USER not in detail["message"]


def test_a_revision_the_repo_lacks_names_model_revision(stack, alice, hub_models):
    r = save(alice, "tiny-org/tiny-llama", revision="no-such-branch")
    assert r.status_code == 422 and r.json()["detail"]["field"] == "model.revision"


def test_a_local_model_folder_is_not_sent_to_the_hub(stack, alice, tiny_model_dir, hub_models):
    r = save(alice, tiny_model_dir)
    assert r.status_code == 201, r.text
    assert r.json()["hub_check"] is None
