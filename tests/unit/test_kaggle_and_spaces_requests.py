"""The Kaggle and Spaces deploy bodies, their credentials, and Kaggle's checks that need no server."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.gateway.kaggle_limits import check_offline
from services.gateway.schemas import HFSpacesDeploymentRequest, KaggleDeploymentRequest
from shared.config import TrainingConfig
from shared.credentials import HuggingFaceCredentials, KaggleCredentials, plain
from shared.errors import ValidationFailed
from shared.hub_models import check_hub_model, is_hub_id

CONFIG = {"model": {"base_model": "Qwen/Qwen2.5-0.5B"}, "data": {"dataset_id": "d"}}


def test_a_kaggle_body_keeps_the_specification_defaults_and_its_options():
    body = KaggleDeploymentRequest.model_validate({"training_config_id": "c", "notebook_title": "My run"})
    assert body.configuration_id == "c" and body.is_private and body.enable_gpu and body.enable_internet
    assert body.provider_options() == {"notebook_title": "My run", "is_private": True, "dataset_sources": [],
                                       "model_sources": [], "enable_gpu": True, "enable_internet": True,
                                       "machine_shape": None}


@pytest.mark.parametrize(("extra", "field", "words"), [
    ({"notebook_title": "abc"}, "notebook_title", "at least 5"),
    ({"machine_shape": "NvidiaA100"}, "machine_shape", "NvidiaTeslaT4"),
    ({"dataset_sources": ["no-slash"]}, "dataset_sources", "owner/dataset-slug"),
    ({"model_sources": ["google/gemma"]}, "model_sources", "owner/model/framework/variation"),
])
def test_a_bad_kaggle_body_names_the_field_and_the_fix(extra, field, words):
    with pytest.raises(ValidationError) as caught:
        KaggleDeploymentRequest.model_validate({"config_id": "c", "notebook_title": "My run", **extra})
    error = caught.value.errors()[0]
    assert error["loc"][0] == field and words in str(caught.value)


def test_a_spaces_body_checks_the_space_the_tier_and_the_push_target():
    body = HFSpacesDeploymentRequest.model_validate({"config_id": "c", "space_name": "alice/run-1",
                                                     "budget_limit": 3, "alert_threshold": 80})
    assert body.visibility == "private" and body.gpu_tier == "t4-small" and body.budget_controls().budget_limit == 3
    assert body.provider_options()["space_name"] == "alice/run-1"
    for bad, field in (({"space_name": "no-owner"}, "space_name"), ({"space_name": "a/b", "gpu_tier": "h100"},
                                                                     "gpu_tier"),
                       ({"space_name": "a/b", "push_to_hub": "x/y/z"}, "push_to_hub")):
        with pytest.raises(ValidationError) as caught:
            HFSpacesDeploymentRequest.model_validate({"config_id": "c", **bad})
        assert caught.value.errors()[0]["loc"][0] == field


def test_kaggle_credentials_are_a_username_and_key_or_a_token():
    pair = KaggleCredentials.model_validate({"username": "alice", "key": "0123456789abcdef"})
    assert plain(pair) == {"username": "alice", "key": "0123456789abcdef"}
    assert plain(KaggleCredentials.model_validate({"api_token": "KGAT_0123456789"})) == {"api_token": "KGAT_0123456789"}
    for bad in ({"username": "alice"}, {}, {"username": "a", "key": "0123456789", "api_token": "0123456789"}):
        with pytest.raises(ValidationError, match="username and key"):
            KaggleCredentials.model_validate(bad)
    assert "hf_secret" not in repr(HuggingFaceCredentials(token="hf_secret_token"))


def test_without_internet_a_hub_model_is_refused_naming_the_field_and_model_sources():
    with pytest.raises(ValidationFailed) as caught:
        check_offline(TrainingConfig.model_validate(CONFIG))
    assert caught.value.field == "model.base_model" and "model_sources" in caught.value.message
    attached = {**CONFIG, "model": {"base_model": "/kaggle/input/qwen-weights"}}
    check_offline(TrainingConfig.model_validate(attached))  # a folder of an attached source is fine


def test_a_hub_that_cannot_be_reached_skips_the_check_instead_of_failing(monkeypatch):
    from services.cli.embedded import free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    answer = check_hub_model("Qwen/Qwen2.5-0.5B", None, None, timeout_s=2)
    assert answer.status == "skipped" and "could not be reached" in answer.reason
    assert is_hub_id("Qwen/Qwen2.5-0.5B") and not is_hub_id("/models/tiny")
