"""The built-in serving engine as a real process, driven through the official openai client."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from services.cli.embedded import free_port
from tests.adapters import make_lora_adapter

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "The capital of France is"


class Server:
    def __init__(self, url: str, key: str, proc: subprocess.Popen, log_path: Path, extra_adapter: str):
        self.url, self.key, self.proc, self.log_path, self.extra_adapter = url, key, proc, log_path, extra_adapter
        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    from trainer.tiny_model import build_tiny_model

    tmp = tmp_path_factory.mktemp("builtin")
    base = build_tiny_model(str(tmp / "base"))
    adapter = make_lora_adapter(base, str(tmp / "adapter"), seed=1)
    extra = make_lora_adapter(base, str(tmp / "extra"), seed=2)
    port, key = free_port(), secrets.token_urlsafe(16)
    log_path = tmp / "server.log"
    env = {**os.environ, "TUNEFLEET_ENGINE_KEY": key, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "services.model_registry.serving.builtin_server", "--host", "127.0.0.1",
            "--port", str(port), "--base", base, "--base-name", "base", "--adapter", f"ft={adapter}",
            "--max-model-len", "256", "--max-new-tokens-limit", "64"]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    srv = Server(url, key, proc, log_path, extra)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{srv.log()}"
            assert time.monotonic() < deadline, f"no /health within 120s:\n{srv.log()}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield srv
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert key not in log_path.read_text(errors="replace"), "the API key must never be logged"


def _chat(server: Server, model: str, **kw):
    return server.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=12,
        temperature=0, **kw)


def test_models(server: Server):
    models = {m.id: m for m in server.client.models.list().data}
    assert set(models) == {"base", "ft"}
    assert models["base"].owned_by == "tunefleet"
    assert models["ft"].model_extra["parent"] == "base"
    assert models["base"].model_extra["parent"] is None
    assert models["ft"].model_extra["max_model_len"] == 256


def test_chat_and_stream_agree(server: Server):
    full = _chat(server, "ft")
    choice = full.choices[0]
    assert full.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert full.usage.prompt_tokens > 0
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens
    assert 0 < full.usage.completion_tokens <= 12

    chunks = list(_chat(server, "ft", stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == choice.message.content


def test_completions(server: Server):
    out = server.client.completions.create(model="base", prompt=PROMPT, max_tokens=5, temperature=0)
    assert out.object == "text_completion"
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.completion_tokens <= 5
    pieces = list(server.client.completions.create(model="base", prompt=PROMPT, max_tokens=5, temperature=0,
                                                   stream=True))
    assert "".join(p.choices[0].text for p in pieces) == out.choices[0].text
    assert pieces[-1].choices[0].finish_reason == out.choices[0].finish_reason


def test_stop_string_cuts_the_text(server: Server):
    full = server.client.completions.create(model="ft", prompt=PROMPT, max_tokens=16, temperature=0)
    text = full.choices[0].text
    assert len(text) >= 4, f"the seeded model wrote too little to cut: {text!r}"
    stop = text[2:4]
    cut = server.client.completions.create(model="ft", prompt=PROMPT, max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    pieces = list(server.client.completions.create(model="ft", prompt=PROMPT, max_tokens=16, temperature=0,
                                                   stop=[stop], stream=True))
    assert "".join(p.choices[0].text for p in pieces) == cut.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "stop"


def test_adapter_changes_the_answer(server: Server):
    base = server.client.completions.create(model="base", prompt=PROMPT, max_tokens=12, temperature=0)
    ft = server.client.completions.create(model="ft", prompt=PROMPT, max_tokens=12, temperature=0)
    assert base.choices[0].text != ft.choices[0].text
    again = server.client.completions.create(model="base", prompt=PROMPT, max_tokens=12, temperature=0)
    assert again.choices[0].text == base.choices[0].text, "the base must run with the adapters disabled"


def test_seeded_sampling_repeats(server: Server):
    a = server.client.completions.create(model="ft", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=7)
    b = server.client.completions.create(model="ft", prompt=PROMPT, max_tokens=8, temperature=1.0, seed=7)
    assert a.choices[0].text == b.choices[0].text


def test_wrong_key(server: Server):
    bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.get(f"{server.url}/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{server.url}/health").status_code == 200  # /health needs no key


def test_unknown_model(server: Server):
    with pytest.raises(openai.NotFoundError) as err:
        _chat(server, "nope")
    assert "The model `nope` does not exist." in str(err.value)


def test_bad_requests(server: Server):
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        server.client.completions.create(model="base", prompt=PROMPT, max_tokens=65)  # over the limit
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        server.client.completions.create(model="base", prompt=PROMPT * 80, max_tokens=60)  # over max-model-len
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "base"},
                   headers={"Authorization": f"Bearer {server.key}"})
    assert r.status_code == 400
    body = r.json()["error"]
    assert "prompt" in body["message"]
    assert body["code"] == 400


def test_load_and_unload_adapter(server: Server):
    headers = {"Authorization": f"Bearer {server.key}"}
    r = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "extra", "lora_path": server.extra_adapter},
                   headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert r.text == "Success: LoRA adapter 'extra' added successfully."
    again = httpx.post(f"{server.url}/v1/load_lora_adapter",
                       json={"lora_name": "extra", "lora_path": server.extra_adapter}, headers=headers, timeout=60)
    assert again.status_code == 400
    missing = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "x"}, headers=headers)
    assert missing.status_code == 400

    assert "extra" in {m.id for m in server.client.models.list().data}
    extra = server.client.completions.create(model="extra", prompt=PROMPT, max_tokens=12, temperature=0)
    ft = server.client.completions.create(model="ft", prompt=PROMPT, max_tokens=12, temperature=0)
    assert extra.choices[0].text != ft.choices[0].text
    assert _chat(server, "extra").choices[0].message.content is not None

    r = httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": "extra"}, headers=headers)
    assert r.status_code == 200, r.text
    assert httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": "extra"},
                      headers=headers).status_code == 404
    assert "extra" not in {m.id for m in server.client.models.list().data}
    ft_after = server.client.completions.create(model="ft", prompt=PROMPT, max_tokens=12, temperature=0)
    assert ft_after.choices[0].text == ft.choices[0].text


async def test_chat_templates_and_the_last_adapter_in_process(tmp_path):
    """In process: the adapter's tokenizer gives the chat template; without one chat is a 400; unloading the last
    adapter leaves the plain base model."""
    from transformers import AutoTokenizer

    from services.model_registry.serving.builtin_server import Engine, create_app
    from trainer.tiny_model import build_tiny_model

    base = build_tiny_model(str(tmp_path / "base"))
    adapter = make_lora_adapter(base, str(tmp_path / "adapter"), seed=3)  # its tokenizer keeps the chat template
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = None
    for name in os.listdir(base):
        if "tokenizer" in name or "chat_template" in name or name == "special_tokens_map.json":
            os.remove(os.path.join(base, name))
    tok.save_pretrained(base)

    engine = Engine(base_path=base, base_name="base", max_new_tokens_limit=32)
    engine.load([])
    ready = threading.Event()
    ready.set()
    app = create_app(engine, "k", ready=ready)
    headers = {"Authorization": "Bearer k"}
    messages = [{"role": "user", "content": "hi"}]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t", headers=headers,
                                 timeout=60) as c:
        r = await c.post("/v1/chat/completions", json={"model": "base", "messages": messages, "max_tokens": 4})
        assert r.status_code == 400
        assert "/v1/completions" in r.json()["error"]["message"]
        assert "chat_template" in r.json()["error"]["message"]

        r = await c.post("/v1/load_lora_adapter", json={"lora_name": "ft", "lora_path": adapter})
        assert r.status_code == 200, r.text
        r = await c.post("/v1/chat/completions", json={"model": "ft", "messages": messages, "max_tokens": 4,
                                                       "temperature": 0})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["role"] == "assistant"

        before = (await c.post("/v1/completions", json={"model": "base", "prompt": PROMPT, "max_tokens": 6,
                                                        "temperature": 0})).json()["choices"][0]["text"]
        assert (await c.post("/v1/unload_lora_adapter", json={"lora_name": "ft"})).status_code == 200
        r = await c.post("/v1/completions", json={"model": "base", "prompt": PROMPT, "max_tokens": 6,
                                                  "temperature": 0})
        assert r.json()["choices"][0]["text"] == before
        assert [m["id"] for m in (await c.get("/v1/models")).json()["data"]] == ["base"]

        r = await c.post("/v1/completions", json={"model": "base", "prompt": PROMPT, "max_tokens": 4, "stream": True,
                                                  "stream_options": {"include_usage": True}, "temperature": 0})
        lines = [line for line in r.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert '"usage"' in lines[-2]
        r = await c.post("/v1/completions", content=b"not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 400
