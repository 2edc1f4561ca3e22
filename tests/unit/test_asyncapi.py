"""The AsyncAPI document: valid against AsyncAPI's own JSON Schema, with a channel for every subject of
``shared.subjects`` that TuneFleet publishes, and served by the gateway without a key."""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import jsonschema
import pytest
from fastapi.testclient import TestClient
from faststream.nats.schemas.js_stream import is_subject_match_wildcard

from services.gateway.app import create_app
from shared import asyncapi, subjects
from shared.settings import Settings

SCHEMA = Path(__file__).resolve().parents[1] / "fixtures" / "asyncapi" / f"{asyncapi.ASYNCAPI_VERSION}.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def named_subjects() -> dict[str, str]:
    """Every subject ``shared.subjects`` names, by its name there; a function's with ``{name}`` for each parameter.
    ``PREFIX`` and ``DEAD_LETTERS_PREFIX`` begin subjects and are none; lists are streams' filters."""
    named = {}
    for name, value in vars(subjects).items():
        if inspect.isfunction(value) and value.__module__ == subjects.__name__:
            named[name] = asyncapi.template(value)
        elif isinstance(value, str) and value.startswith(f"{subjects.PREFIX}.") and not name.endswith("PREFIX"):
            named[name] = value
    return named


def is_wildcard(subject: str) -> bool:
    return any(token in ("*", ">") for token in subject.split("."))


def addresses() -> set[str]:
    return {channel["address"] for channel in asyncapi.document()["channels"].values()}


def test_the_document_is_valid_asyncapi(validator):
    document = asyncapi.document()
    assert document["asyncapi"] == asyncapi.ASYNCAPI_VERSION
    validator.validate(document)


def _without_info(document: dict) -> None:
    del document["info"]


def _other_version(document: dict) -> None:
    document["asyncapi"] = "2.6.0"


def _address_not_a_string(document: dict) -> None:
    document["channels"]["JobStatusChanged"]["address"] = 42


def _version_2_action(document: dict) -> None:
    document["operations"]["JobStatusChanged"]["action"] = "publish"


def _payload_field_of_no_type(document: dict) -> None:
    document["components"]["schemas"]["JobCost"]["properties"]["cost_so_far"]["type"] = "decimal"


@pytest.mark.parametrize("breakage", [_without_info, _other_version, _address_not_a_string, _version_2_action,
                                      _payload_field_of_no_type])
def test_a_broken_document_fails_validation(validator, breakage):
    broken = copy.deepcopy(asyncapi.document())
    breakage(broken)
    assert not validator.is_valid(broken)


def test_every_subject_published_is_a_channel():
    named = named_subjects()
    assert named["job_status"] == "tunefleet.job.{job_id}.status" and named["MODEL_REGISTERED"] in addresses()
    missing = {name: subject for name, subject in named.items()
               if not is_wildcard(subject) and subject not in addresses() and subject not in asyncapi.LEFT_OUT}
    assert not missing, ("subjects with no channel: give each a message model in shared/events.py whose subject "
                         f"it is, or name it in shared.asyncapi.LEFT_OUT with why: {missing}")


def test_every_wildcard_of_subjects_matches_a_channel():
    """``JOB_STATUS_ANY``, ``job_all`` and the like are what subscribers give: each takes in some channel."""
    wildcards = [asyncapi.wildcard(address) for address in addresses()]
    patterns = {name: subject for name, subject in named_subjects().items() if is_wildcard(subject)}
    assert "JOB_STATUS_ANY" in patterns and "job_all" in patterns
    for name, pattern in patterns.items():
        assert any(is_subject_match_wildcard(wildcard, asyncapi.wildcard(pattern)) for wildcard in wildcards), name


def test_each_parameter_is_a_field_every_payload_has():
    document = asyncapi.document()
    for channel in document["channels"].values():
        names = asyncapi.PARAMETER.findall(channel["address"])
        assert sorted(channel.get("parameters", {})) == sorted(names)
        message_name = channel["messages"]["Message"]["$ref"].rsplit("/", 1)[1]
        payload_name = document["components"]["messages"][message_name]["payload"]["$ref"].rsplit("/", 1)[1]
        assert set(names) <= set(document["components"]["schemas"][payload_name]["required"]), channel["address"]


def test_each_channel_says_whether_jetstream_stores_it():
    channels = asyncapi.document()["channels"]
    assert "stream TUNEFLEET_EVENTS" in channels["JobStatusChanged"]["description"]
    assert "stream TUNEFLEET_COMMANDS" in channels["ProvisionJob"]["description"]
    assert "Plain NATS, not stored" in channels["MetricsAppended"]["description"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> TestClient:
    """The gateway's app, its lifespan not run: these routes need neither NATS nor PostgreSQL."""
    return TestClient(create_app(Settings(home=tmp_path_factory.mktemp("home"))))


def test_the_gateway_serves_the_document_without_a_key(gateway):
    r = gateway.get("/asyncapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == asyncapi.document()


def test_the_gateway_serves_a_page_readable_without_scripts(gateway):
    r = gateway.get("/asyncapi")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<script" not in r.text and 'href="asyncapi.json"' in r.text
    for address in addresses():
        assert f"<code>{address}</code>" in r.text
    assert '<h3 id="JobStatusChanged">' in r.text and '<a href="#JobCost">JobCost</a>' in r.text
    assert "/asyncapi" not in gateway.get("/openapi.json").json()["paths"]  # like /docs, not an API route
