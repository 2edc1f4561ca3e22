"""The job CLI's client: where its URL and key come from, the credentials file's mode, finding a job, model,
configuration or data set by id, prefix or name (against httpx.MockTransport), the API's refusals as messages, and
what a followed job's events and end become."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys

import httpx
import pytest
from rich.console import Console

from services.cli import credentials
from services.cli.client import STATUS_EXIT, CliError, ExitCode, Gateway, api_error, pick, route_missing
from services.cli.deploy import Provider, _confirm, deploy_body, parse_sets
from services.cli.embedded import free_port
from services.cli.follow import JobState, follow
from services.cli.logs import LogSource, lines_after
from shared.states import TERMINAL

KEY = "tf_secret_key_never_printed_0123"


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path / "home")}


# --- settings ---------------------------------------------------------------------------------------------------


def test_the_environment_wins_over_the_file_and_an_option_over_both(env):
    assert credentials.resolve(env=env) == credentials.Credentials(credentials.DEFAULT_URL, None)
    path = credentials.save("http://stored:1/", "tf_stored", env)
    assert path == credentials.credentials_file(env) == credentials.config_dir(env) / "credentials.json"
    stored = credentials.resolve(env=env)
    assert (stored.url, stored.key, stored.url_from, stored.key_from) == ("http://stored:1", "tf_stored", str(path),
                                                                         str(path))
    env.update(TUNEFLEET_URL="http://env:2", TUNEFLEET_API_KEY="tf_env")
    from_env = credentials.resolve(env=env)
    assert (from_env.url, from_env.key, from_env.key_from) == ("http://env:2", "tf_env", "TUNEFLEET_API_KEY")
    given = credentials.resolve("http://option:3", "tf_option", env=env)
    assert (given.url, given.key, given.url_from) == ("http://option:3", "tf_option", "--url")
    env.pop("TUNEFLEET_API_KEY")
    mixed = credentials.resolve(env=env)
    assert (mixed.url, mixed.key) == ("http://env:2", "tf_stored")  # each setting on its own


def test_without_xdg_the_file_lives_under_home(tmp_path):
    home = {"HOME": str(tmp_path)}
    assert credentials.credentials_file(home) == tmp_path / ".config" / "tunefleet" / "credentials.json"


def test_the_credentials_file_is_0600_from_its_creation_and_its_folder_0700(env):
    old = os.umask(0)  # even a process that would make every file world-writable
    try:
        path = credentials.save("http://a:1", KEY, env)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        path.chmod(0o644)  # widened by hand: the next login narrows it again
        credentials.save("http://b:2", KEY, env)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        os.umask(old)
    assert credentials.read_file(path) == {"url": "http://b:2", "api_key": KEY}
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no temporary file left
    assert credentials.remove(env) == path and not path.exists()
    assert credentials.remove(env) is None


def test_a_broken_credentials_file_counts_as_none(env):
    path = credentials.credentials_file(env)
    path.parent.mkdir(parents=True)
    path.write_text("not json")
    assert credentials.resolve(env=env).key is None


def test_the_key_stays_out_of_reprs():
    assert KEY not in repr(credentials.Credentials("http://a", KEY))


def test_an_unreachable_gateway_names_the_url_and_how_to_set_it_and_never_the_key(env, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    run = subprocess.run([sys.executable, "-m", "services.cli.main", "jobs", "list"], capture_output=True, text=True,
                         env={**os.environ, **env, "TUNEFLEET_URL": url, "TUNEFLEET_API_KEY": KEY, "COLUMNS": "200"},
                         timeout=60, cwd=os.getcwd())
    assert run.returncode == ExitCode.UNREACHABLE, run.stderr
    assert url in run.stderr and "TUNEFLEET_URL" in run.stderr and "tunefleet login" in run.stderr
    assert KEY not in run.stdout + run.stderr


def test_no_key_is_bad_input(env):
    with pytest.raises(CliError) as caught:
        Gateway(credentials.resolve(env=env))
    assert caught.value.code == ExitCode.BAD_INPUT and "tunefleet login" in " ".join(caught.value.lines)


# --- finding by reference, against a mock gateway ----------------------------------------------------------------

JOBS = [  # newest first, as the API lists them
    {"job_id": "aaaa1111-0000-4000-8000-000000000003", "name": "tiny", "status": "running", "provider": "local",
     "created_at": "2026-12-03T12:03:00"},
    {"job_id": "aaaa2222-0000-4000-8000-000000000002", "name": "tiny", "status": "completed", "provider": "local",
     "created_at": "2026-12-03T12:02:00"},
    {"job_id": "bbbb3333-0000-4000-8000-000000000001", "name": "other", "status": "failed", "provider": "runpod",
     "created_at": "2026-12-03T12:01:00"},
]
MODELS = [
    {"id": "cccc0000-0000-4000-8000-000000000001", "job_id": JOBS[1]["job_id"], "name": "tiny", "version": 1,
     "created_at": "2026-12-03T12:05:00"},
    {"id": "dddd0000-0000-4000-8000-000000000002", "job_id": JOBS[0]["job_id"], "name": "tiny", "version": 2,
     "created_at": "2026-12-03T12:04:00"},
]
CONFIGS = [{"id": "eeee0000-0000-4000-8000-000000000001", "config": {"name": "mine"}, "updated_at": "2026-12-03"}]


def mock_gateway(seen: list[httpx.Request] | None = None, logs=None) -> Gateway:
    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        assert request.headers["authorization"] == f"Bearer {KEY}"
        path, offset = request.url.path, int(request.url.params.get("offset", 0))
        limit = int(request.url.params.get("limit", 500))
        if path == "/api/training/jobs":
            return httpx.Response(200, json=JOBS[offset:offset + limit])
        if path.startswith("/api/training/jobs/") and path.endswith("/logs"):
            return logs(request) if logs else httpx.Response(404, json={"detail": "Not Found"})
        if path.startswith("/api/training/jobs/"):
            found = [j for j in JOBS if j["job_id"] == path.rsplit("/", 1)[1]]
            if not found:
                return httpx.Response(404, json={"detail": {"code": "not_found", "message": "job not found"}})
            return httpx.Response(200, json={**found[0], "logs_tail": tails.pop(0) if tails else ""})
        if path == "/api/models":
            return httpx.Response(200, json=MODELS)
        if path.startswith("/api/models/"):
            return httpx.Response(404, json={"detail": {"code": "not_found", "message": "no model"}})
        if path == "/api/training/configurations":
            return httpx.Response(200, json={"total_count": 1, "limit": 500, "offset": 0, "configurations": CONFIGS})
        return httpx.Response(404, json={"detail": "Not Found"})

    tails: list[str] = []
    gateway = Gateway(credentials.Credentials("http://gw", KEY), transport=httpx.MockTransport(handler))
    gateway.tails = tails
    return gateway


def test_a_job_by_full_id_is_asked_for_directly():
    seen: list[httpx.Request] = []
    with mock_gateway(seen) as gateway:
        assert gateway.job(JOBS[2]["job_id"])["name"] == "other"
    assert [r.url.path for r in seen] == [f"/api/training/jobs/{JOBS[2]['job_id']}"]


def test_a_unique_prefix_finds_its_job_and_an_ambiguous_one_lists_the_matches():
    with mock_gateway() as gateway:
        assert gateway.job("bbbb")["job_id"] == JOBS[2]["job_id"]
        assert gateway.job("AAAA2")["job_id"] == JOBS[1]["job_id"]
        with pytest.raises(CliError) as caught:
            gateway.job("aaaa")
    error = caught.value
    assert error.code == ExitCode.BAD_INPUT and "matches 2 jobs" in error.message
    assert [line[:8] for line in error.lines] == ["aaaa1111", "aaaa2222"]
    assert all("tiny" in line for line in error.lines)


def test_a_name_means_its_newest_job_except_where_that_would_be_a_guess():
    with mock_gateway() as gateway:
        assert gateway.job("tiny")["job_id"] == JOBS[0]["job_id"]
        assert gateway.job("other", newest_of_name=False)["job_id"] == JOBS[2]["job_id"]
        with pytest.raises(CliError, match="name 'tiny' matches 2 jobs"):
            gateway.job("tiny", newest_of_name=False)
        with pytest.raises(CliError, match="no job 'zzz'") as caught:
            gateway.job("zzz")
    assert caught.value.code == ExitCode.BAD_INPUT


def test_models_by_name_take_the_highest_version_and_by_job_id_its_model():
    with mock_gateway() as gateway:
        assert gateway.model("tiny")["version"] == 2
        assert gateway.model(JOBS[1]["job_id"])["id"] == MODELS[0]["id"]  # a full id: not a model's, a job's
        assert gateway.model("cccc")["id"] == MODELS[0]["id"]
        assert gateway.configuration("mine")["id"] == CONFIGS[0]["id"]
        assert gateway.configuration("eeee")["id"] == CONFIGS[0]["id"]


def test_pages_reads_every_page():
    seen: list[httpx.Request] = []
    with mock_gateway(seen) as gateway:
        assert gateway.pages("/api/training/jobs", limit=2) == JOBS
    assert [r.url.params["offset"] for r in seen] == ["0", "2"]


def test_pick_refuses_an_empty_reference():
    with pytest.raises(CliError, match="name a job"):
        pick(JOBS, " ", kind="job", ids=("job_id",))


# --- the API's refusals -----------------------------------------------------------------------------------------


def _response(status: int, body, method="POST", path="/api/training/configurations") -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request(method, f"http://gw{path}"))


def test_a_refused_configuration_lists_each_field_with_its_fix():
    error = api_error(_response(422, {"detail": {"code": "validation_failed", "message": "...", "errors": [
        {"field": "training.learning_rate", "problem": "Input should be greater than 0"},
        {"field": "training.lora.r", "problem": "must be a power of two: use 8, 16 or 32"}]}}))
    assert error.code == ExitCode.BAD_INPUT
    assert error.lines == ["training.learning_rate: Input should be greater than 0",
                           "training.lora.r: must be a power of two: use 8, 16 or 32"]
    one = api_error(_response(422, {"detail": {"code": "validation_failed", "field": "data.dataset_id",
                                               "message": "the configuration names no data set: give dataset_id"}}))
    assert one.lines == ["data.dataset_id: the configuration names no data set: give dataset_id"]


def test_a_refused_data_set_lists_its_bad_lines():
    error = api_error(_response(422, {"detail": {"code": "dataset_invalid", "message": "d.jsonl: 2 bad lines",
                                                 "field": "file", "details": {"errors": [
                                                     {"line": 3, "problem": "not JSON"},
                                                     {"line": 7, "problem": "no text field"}]}}}))
    assert error.code == ExitCode.BAD_INPUT and "data set was refused" in error.message
    assert error.lines == ["line 3: not JSON", "line 7: no text field"]


def test_a_missing_route_is_told_apart_from_a_missing_job():
    missing = _response(404, {"detail": "Not Found"}, "POST", "/api/training/jobs/x/retry")
    assert route_missing(missing) and "has no POST /api/training/jobs/x/retry" in api_error(missing).message
    gone = _response(404, {"detail": {"code": "not_found", "message": "job x not found"}})
    assert not route_missing(gone) and api_error(gone).code == ExitCode.FAILED
    assert "401" not in api_error(_response(401, {"detail": {"code": "unauthorized", "message": "bad key"}})).message


# --- logs -------------------------------------------------------------------------------------------------------


def test_lines_after_keeps_what_is_new_in_a_moving_tail():
    assert lines_after([], ["a", "b"]) == ["a", "b"]
    assert lines_after(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert lines_after(["a", "b"], ["a", "b"]) == []
    assert lines_after(["x"], ["y", "z"]) == ["y", "z"]


def test_logs_fall_back_to_the_tail_only_when_the_route_is_missing():
    with mock_gateway() as gateway:
        gateway.tails.extend(["one\ntwo", "two\nthree\nfour"])
        source = LogSource(gateway, JOBS[0]["job_id"])
        assert [line.text for line in source.read()] == ["one", "two"]
        assert [line.text for line in source.read()] == ["three", "four"]
        assert not source.has_route


def test_logs_from_the_route_page_on_by_next_after():
    pages = {None: ([(1, 1, "a"), (1, 2, "b")], 2), "2": ([(2, 1, "c")], 3), "3": ([], 3)}

    def logs(request: httpx.Request) -> httpx.Response:
        lines, after = pages[request.url.params.get("after")]
        assert request.url.params.get("q") == "x"
        return httpx.Response(200, json={"job_id": "j", "lines": [{"attempt": a, "number": n, "text": t}
                                                                   for a, n, t in lines],
                                         "next_after": after, "total": 3})

    with mock_gateway(logs=logs) as gateway:
        source = LogSource(gateway, JOBS[0]["job_id"], query="x")
        assert [(line.attempt, line.text) for line in source.read()] == [(1, "a"), (1, "b"), (2, "c")]
        assert source.read() == [] and source.has_route and source.after == 3


# --- following ----------------------------------------------------------------------------------------------------


def test_every_final_state_has_its_exit_code():
    assert set(STATUS_EXIT) == TERMINAL
    assert [STATUS_EXIT[s] for s in ("completed", "failed", "stopped", "budget_exceeded")] == [0, 1, 3, 4]


def test_events_move_the_bar():
    state = JobState("j", total=None)
    state.apply("snapshot", {"status": "running", "attempt": 1, "latest_metrics": {"step": 2, "loss": 2.5},
                             "progress": 0.25, "live_cost": {"cost_so_far": 0.5, "cost_per_hour": 1.2}})
    assert (state.step, state.total, state.loss, state.cost_so_far) == (2, 8, 2.5, 0.5)
    state.apply("metrics", {"attempt": 1, "metrics": [{"step": 3, "values": {"loss": 2.0}},
                                                      {"step": 4, "values": {"learning_rate": 0.1}}]})
    assert (state.step, state.loss) == (4, 2.0) and state.eta is not None
    assert state.fields()["steps"] == "step 4/8" and state.fields()["cost"] == "$0.50 at $1.20/h"
    assert state.apply("status", {"status": "preempted", "reason": "machine taken back"}) == (
        "preempted: machine taken back")
    state.apply("status", {"status": "queued"})
    assert state.attempt == 2
    assert "budget alert" in state.apply("budget_alert", {"kind": "threshold", "cost": {"cost_so_far": 4,
                                                                                        "budget_limit": 5}})
    state.apply("status", {"status": "completed", "cost": {"cost_so_far": 0.9}})
    assert state.terminal and state.cost_so_far == 0.9 and state.eta is None


# --- deploy -------------------------------------------------------------------------------------------------------


def test_deploy_bodies_per_provider():
    source, config = {"configuration_id": "c"}, {"name": "mine"}
    kwargs = {"gpu": None, "gpus": None, "budget": 5.0, "space": None, "title": None, "preflight": None,
              "max_per_hour": None, "extra": {}}
    assert deploy_body(Provider.LOCAL, source, config, **kwargs) == {"configuration_id": "c", "budget_limit": 5.0}
    assert deploy_body(Provider.RUNPOD, source, config, **{**kwargs, "gpus": 2})["gpu_type"] == "auto"
    assert deploy_body(Provider.LAMBDA, source, config, **{**kwargs, "gpu": "gpu_1x_a10"})["instance_type"] == (
        "gpu_1x_a10")
    assert deploy_body(Provider.KAGGLE, source, config, **kwargs)["notebook_title"] == "TuneFleet mine"
    with pytest.raises(CliError, match="--space"):
        deploy_body(Provider.HF_SPACES, source, config, **kwargs)
    with pytest.raises(CliError, match="chooses the GPU"):
        deploy_body(Provider.AUTO, source, config, **{**kwargs, "gpu": "A100"})
    assert deploy_body(Provider.LOCAL, source, config, **{**kwargs, "extra": parse_sets(
        ["alert_threshold=80", "notify_email=a@b.c"])}) == {**source, "budget_limit": 5.0, "alert_threshold": 80,
                                                             "notify_email": "a@b.c"}


def test_deploying_where_it_costs_asks_and_without_a_terminal_refuses(monkeypatch):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
    _confirm(Provider.LOCAL, None, yes=False)  # local costs nothing: nothing to ask
    _confirm(Provider.RUNPOD, None, yes=True)
    with pytest.raises(CliError, match="-y/--yes") as caught:
        _confirm(Provider.RUNPOD, None, yes=False)
    assert caught.value.code == ExitCode.BAD_INPUT


def _sse(*events: tuple[str, dict]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


def streaming_gateway(body) -> Gateway:
    """A gateway whose job events are ``body`` (bytes, or an iterator of bytes), with no logs route."""
    snapshot = {"job_id": "j1", "status": "running", "attempt": 1, "logs_tail": "booting\nloading the model"}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=body if isinstance(body, bytes) else body())
        if request.url.path.endswith("/logs"):
            return httpx.Response(404, json={"detail": "Not Found"})
        return httpx.Response(200, json=snapshot)

    return Gateway(credentials.Credentials("http://gw", KEY), transport=httpx.MockTransport(handler))


def test_following_ends_with_the_exit_code_of_how_the_job_ended():
    for final, code in (("completed", 0), ("failed", 1), ("stopped", 3), ("budget_exceeded", 4)):
        events = _sse(("snapshot", {"status": "running", "attempt": 1, "latest_metrics": None}),
                      ("metrics", {"attempt": 1, "metrics": [{"step": 1, "values": {"loss": 3.0}}]}),
                      ("log", {"lines": [{"attempt": 1, "number": 3, "text": "step one done"}]}),
                      ("metrics", {"attempt": 1, "metrics": [{"step": 4, "values": {"loss": 1.5}}]}),
                      ("status", {"status": final, "reason": None if final == "completed" else "why",
                                  "cost": {"cost_so_far": 0.25}}))
        screen = io.StringIO()
        with streaming_gateway(events) as gateway:
            assert follow(gateway, "j1", total_steps=4, console=Console(file=screen, width=200)) == code
        text = screen.getvalue()
        assert "step 4/4" in text and "loss 1.5000" in text and "step one done" in text
        assert f"job j1 ended {final}" in text and "$0.25" in text
        assert "loading the model" in text  # the tail, from a gateway without the logs route


def test_ctrl_c_while_following_detaches_and_says_how_to_come_back(capsys):
    def body():
        yield _sse(("snapshot", {"status": "running", "attempt": 1}))
        raise KeyboardInterrupt

    with streaming_gateway(body) as gateway:
        assert follow(gateway, "j1", console=Console(file=io.StringIO())) == ExitCode.DETACHED
    assert "tunefleet jobs watch j1" in capsys.readouterr().err


# --- the commands, in process, on a mock gateway answering with the gateway's own schemas -----------------------


def _job(job_id: str, status: str, **extra) -> dict:
    from datetime import UTC, datetime, timedelta

    from services.gateway.schemas import JobPublic
    from shared.events import JobCost

    now = datetime.now(UTC)
    return JobPublic(job_id=job_id, deployment_id=job_id, pod_id=job_id, status=status, deployment_status=status,
                     name="tiny", provider="runpod", gpu_type="NVIDIA A40", gpu_count=2, created_at=now,
                     started_at=now - timedelta(minutes=10), progress=0.5, attempt=2,
                     live_cost=JobCost(cost_per_hour=0.79, cost_so_far=0.1318), **extra).model_dump(mode="json")


def test_jobs_list_shows_the_dashboards_columns_and_json_that_parses(monkeypatch):
    from typer.testing import CliRunner

    from services.cli.main import app

    listed = [_job("aaaa1111-0000-4000-8000-000000000001", "running"),
              _job("bbbb2222-0000-4000-8000-000000000002", "failed", status_reason="CUDA out of memory at step 3")]

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/training/jobs"
        return httpx.Response(200, json=listed)

    monkeypatch.setattr(Gateway, "open", classmethod(lambda cls, *a, **k: cls(
        credentials.Credentials("http://gw", KEY), transport=httpx.MockTransport(handler))))
    runner = CliRunner()
    shown = runner.invoke(app, ["jobs", "list"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    header, running, failed = [line.split() for line in shown.output.splitlines() if line.strip()]
    assert header == ["ID", "NAME", "STATUS", "PROVIDER", "GPU", "$/H", "COST", "ETA", "ATTEMPTS", "ERROR", "CREATED"]
    assert running[:9] == ["aaaa1111", "tiny", "running", "runpod", "2x", "NVIDIA", "A40", "$0.790", "$0.1318"]
    assert running[9] in {"9m59s", "10m00s"} and running[10] == "2"  # as long again as it has run
    assert failed[2] == "failed" and failed[9] == "-" and " ".join(failed[11:-2]) == "CUDA out of memory at step 3"
    as_json = runner.invoke(app, ["jobs", "list", "--json", "--status", "failed"])
    assert [j["job_id"] for j in json.loads(as_json.output)] == [listed[1]["job_id"]]
