"""The Ollama emulator as a real uvicorn server, driven through the official ``ollama`` and ``openai`` clients and
``ollama_engine``; and ``ollama_engine.check`` on its own."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from services.model_registry.serving import ollama_engine
from services.sandbox.ollama import serve
from tests.adapters import make_lora_adapter

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "num_predict": 12}


def _qwen2(out: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trainer.tiny_model import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


class Env:
    def __init__(self, url: str, tmp: Path, base: Path, adapter: Path, created: dict):
        self.url, self.tmp, self.base, self.adapter, self.created = url, tmp, base, adapter, created

    def client(self) -> ollama.AsyncClient:
        return ollama.AsyncClient(host=self.url, timeout=120)


@pytest.fixture(scope="module")
async def env(tmp_path_factory):
    from trainer.tiny_model import build_tiny_model

    tmp = tmp_path_factory.mktemp("ollama")
    base = Path(build_tiny_model(str(tmp / "base")))
    adapter = make_lora_adapter(base, tmp / "adapter")
    server, url = serve(tmp / "store")
    try:
        created = await ollama_engine.create(ollama.AsyncClient(host=url), name="tf-ft", base_dir=base,
                                             adapter_dir=adapter)
        yield Env(url, tmp, base, adapter, created)
    finally:
        server.should_exit = True
        server.thread.join(10)


async def test_base_and_adapter_model_are_listed(env: Env):
    assert env.created["model"] == "tf-ft"
    assert env.created["base_model"].startswith("tunefleet-base-") and len(env.created["base_model"]) == 27
    tags = {m.model: m for m in (await env.client().list()).models}
    assert {"tf-ft:latest", f"{env.created['base_model']}:latest"} <= set(tags)
    assert tags["tf-ft:latest"].details.family == "llama"
    shown = await env.client().show("tf-ft")
    assert "ADAPTER" in shown.modelfile
    # a second create reuses the base (already listed) and gives the same tag
    again = await ollama_engine.create(env.client(), name="tf-ft2", base_dir=env.base, adapter_dir=env.adapter)
    assert again["base_model"] == env.created["base_model"]
    await ollama_engine.delete(env.client(), "tf-ft2")


async def test_blob_digests_are_verified(env: Env):
    body = b"hello"
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    right = "sha256:" + hashlib.sha256(body).hexdigest()
    async with httpx.AsyncClient(base_url=env.url) as http:
        r = await http.post(f"/api/blobs/{wrong}", content=body)
        assert r.status_code == 400 and "digest mismatch" in r.json()["error"]
        assert (await http.head(f"/api/blobs/{wrong}")).status_code == 404
        assert (await http.post("/api/blobs/sha256:abc", content=body)).status_code == 400
        assert (await http.post(f"/api/blobs/{right}", content=body)).status_code == 201
        assert (await http.post(f"/api/blobs/{right}", content=body)).status_code == 200
        assert (await http.head(f"/api/blobs/{right}")).status_code == 200
        # create with an unknown digest, with neither from nor files; the stream (default) carries the error
        r = await http.post("/api/create", json={"model": "x", "files": {"config.json": wrong}, "stream": False})
        assert r.status_code == 400
        r = await http.post("/api/create", json={"model": "x", "stream": False})
        assert r.status_code == 400 and "neither" in r.json()["error"]
        r = await http.post("/api/create", json={"model": "x"})
        assert r.status_code == 200 and "error" in json.loads(r.text.strip().splitlines()[-1])


async def test_from_a_missing_model_fails_as_a_failed_pull(env: Env):
    with pytest.raises(ollama.ResponseError) as err:
        await env.client().create(model="y", from_="no-such-model")
    assert "pull model manifest" in err.value.error


async def test_unsupported_architecture_is_refused(env: Env):
    qwen3 = env.tmp / "qwen3"
    shutil.copytree(env.base, qwen3)
    config = json.loads((qwen3 / "config.json").read_text())
    config.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3")
    (qwen3 / "config.json").write_text(json.dumps(config))
    files = {p.name: await env.client().create_blob(p) for p in ollama_engine.base_files(qwen3)}
    with pytest.raises(ollama.ResponseError) as err:
        await env.client().create(model="q3", files=files)
    assert err.value.status_code == 400 and "unsupported architecture" in err.value.error


async def test_a_qwen2_adapter_is_merged_and_imported_as_gguf(env: Env):
    base = _qwen2(env.tmp / "qwen2")
    adapter = make_lora_adapter(base, env.tmp / "qwen2-adapter")
    assert ollama_engine.check(base, adapter, quantize=None) == []
    # Ollama itself refuses a safetensors adapter on a qwen2 base
    files = {p.name: await env.client().create_blob(p) for p in ollama_engine.base_files(base)}
    await env.client().create(model="q2-st", files=files)
    adapters = {f: await env.client().create_blob(adapter / f) for f in ollama_engine.ADAPTER_FILES}
    with pytest.raises(ollama.ResponseError) as err:
        await env.client().create(model="q2-bad", from_="q2-st", adapters=adapters)
    assert err.value.status_code == 400 and "unsupported architecture" in err.value.error
    await env.client().delete("q2-st")

    work = env.tmp / "q2-work"
    created = await ollama_engine.create(env.client(), name="q2-ft", base_dir=base, adapter_dir=adapter,
                                         work_dir=work)
    assert (work / "model.gguf").is_file() and (work / "merged" / "config.json").is_file()
    assert created["model"] == "q2-ft" and created["base_model"].startswith("tunefleet-base-")
    tags = {m.model: m for m in (await env.client().list()).models}
    for tag in ("q2-ft:latest", f"{created['base_model']}:latest"):
        assert tags[tag].details.format == "gguf" and tags[tag].details.family == "qwen2"
        assert tags[tag].details.quantization_level == "F16"

    async def answer(model: str) -> str:
        return (await env.client().chat(model=model, messages=MESSAGES, options=GREEDY)).message.content

    tuned = await answer("q2-ft")
    assert tuned != await answer(created["base_model"])
    assert await answer("q2-ft") == tuned


async def test_a_llama_adapter_with_quantize_is_imported_as_gguf(env: Env):
    assert ollama_engine.check(env.base, env.adapter, quantize="q8_0") == []
    created = await ollama_engine.create(env.client(), name="tf-q8", base_dir=env.base, adapter_dir=env.adapter,
                                         quantize="q8_0")
    assert created["base_model"] not in (None, env.created["base_model"])  # the GGUF base, not the safetensors one
    tags = {m.model: m for m in (await env.client().list()).models}
    assert tags["tf-q8:latest"].details.format == "gguf"
    assert tags["tf-q8:latest"].details.quantization_level == "Q8_0"
    assert tags[f"{created['base_model']}:latest"].details.quantization_level == "F16"
    await ollama_engine.delete(env.client(), "tf-q8")


async def test_gguf_create_rules(env: Env):
    import gguf
    import numpy as np

    from services.model_registry.serving import export

    q8 = export.to_gguf(env.base, env.tmp / "gguf" / "q8.gguf", quantize="q8_0")
    digest = await env.client().create_blob(q8)
    await env.client().create(model="tf-q8-gguf", files={"model.gguf": digest})
    tags = {m.model: m for m in (await env.client().list()).models}
    assert tags["tf-q8-gguf:latest"].details.quantization_level == "Q8_0"
    with pytest.raises(ollama.ResponseError) as err:
        await env.client().create(model="tf-q8-again", files={"model.gguf": digest}, quantize="q4_K_M")
    assert err.value.status_code == 400 and "only supported for F16 and F32" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:  # a GGUF model is one file
        config = await env.client().create_blob(env.base / "config.json")
        await env.client().create(model="tf-two", files={"model.gguf": digest, "config.json": config})
    assert err.value.status_code == 400
    other = env.tmp / "gguf" / "rwkv.gguf"
    writer = gguf.GGUFWriter(str(other), "rwkv6")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ollama.ResponseError) as err:
        await env.client().create(model="tf-rwkv", files={"x.gguf": await env.client().create_blob(other)})
    assert err.value.status_code == 400 and "unsupported architecture" in err.value.error
    gen = await env.client().generate(model="tf-q8-gguf", prompt="The capital of", options=GREEDY, raw=True)
    assert gen.eval_count > 0
    await env.client().delete("tf-q8-gguf")


async def test_chat_through_the_ollama_client(env: Env):
    reply = await env.client().chat(model="tf-ft", messages=MESSAGES, options=GREEDY)
    assert reply.done and reply.done_reason in ("stop", "length") and reply.eval_count > 0
    assert reply.total_duration > 0 and reply.prompt_eval_count > 0
    pieces = [c async for c in await env.client().chat(model="tf-ft", messages=MESSAGES, options=GREEDY,
                                                         stream=True)]
    assert pieces[-1].done and not any(c.done for c in pieces[:-1])
    assert "".join(c.message.content for c in pieces) == reply.message.content
    gen = await env.client().generate(model="tf-ft", prompt="The capital of France is", options=GREEDY, raw=True)
    assert gen.response and gen.eval_count > 0


async def test_chat_through_the_openai_client(env: Env):
    client = openai.AsyncOpenAI(base_url=f"{env.url}/v1", api_key="x", max_retries=0)
    assert "tf-ft:latest" in {m.id async for m in client.models.list()}
    reply = await client.chat.completions.create(model="tf-ft", messages=MESSAGES, max_tokens=8, temperature=0)
    text = reply.choices[0].message.content
    assert text and reply.usage.completion_tokens > 0
    stream = await client.chat.completions.create(model="tf-ft", messages=MESSAGES, max_tokens=8, temperature=0,
                                                  stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == text
    done = await client.completions.create(model="tf-ft", prompt="The capital of", max_tokens=5, temperature=0)
    assert done.choices[0].text
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="nope", messages=MESSAGES)


async def test_the_adapter_changes_the_answer(env: Env):
    async def answer(model: str) -> str:
        return (await env.client().generate(model=model, prompt="The capital of France is", raw=True,
                                            options={"temperature": 0, "num_predict": 16})).response

    base, tuned = await answer(env.created["base_model"]), await answer("tf-ft")
    assert base != tuned
    assert await answer("tf-ft") == tuned  # greedy is deterministic


async def test_delete_removes_the_model(env: Env):
    created = await ollama_engine.create(env.client(), name="tf-gone", base_dir=env.base, adapter_dir=env.adapter)
    await ollama_engine.delete(env.client(), created["model"])
    assert "tf-gone:latest" not in {m.model for m in (await env.client().list()).models}
    with pytest.raises(ollama.ResponseError) as err:
        await env.client().chat(model="tf-gone", messages=MESSAGES)
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        await ollama_engine.delete(env.client(), "tf-gone")
    assert err.value.status_code == 404 and "not found" in err.value.error


# -- check ---------------------------------------------------------------------------------------------------------


def _folder(tmp: Path, name: str, arch: str) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": [arch]}))
    (d / "model.safetensors").write_bytes(b"")
    return d


def _lora(tmp: Path, base_name: str = "meta-llama/Llama-3.2-1B", bits: int | None = None) -> Path:
    d = tmp / "run" / "adapter"
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": base_name}))
    (d / "adapter_model.safetensors").write_bytes(b"")
    (tmp / "run" / "metadata.json").write_text(json.dumps({"quantization_bits": bits}))
    return d


def test_check_accepts_a_llama_base_and_adapter(tmp_path: Path):
    assert ollama_engine.check(_folder(tmp_path, "b", "LlamaForCausalLM"), _lora(tmp_path), quantize=None) == []
    assert ollama_engine.check(_folder(tmp_path, "c", "Qwen2ForCausalLM"), None, quantize="q4_K_M") == []


def test_check_names_the_fixes(tmp_path: Path):
    base = _folder(tmp_path, "b", "LlamaForCausalLM")
    adapter = _lora(tmp_path)
    [problem] = ollama_engine.check(base, adapter / "adapter_model.safetensors", quantize=None)
    assert "is a file" in problem and "adapter_config.json" in problem
    [problem] = ollama_engine.check(base / "config.json", None, quantize=None)
    assert "is a file" in problem
    for arch in ("MistralForCausalLM", "Qwen3ForCausalLM"):
        [problem] = ollama_engine.check(_folder(tmp_path, arch, arch), None, quantize=None)
        assert arch in problem and "vllm or builtin" in problem
    assert ollama_engine.check(_folder(tmp_path, "q", "Qwen2ForCausalLM"), adapter, quantize=None) == []
    assert ollama_engine.check(base, adapter, quantize="q4_K_M") == []  # merged and quantized as a GGUF
    [problem] = ollama_engine.check(_folder(tmp_path, "p", "Phi3ForCausalLM"), adapter, quantize=None)
    assert "Phi3ForCausalLM" in problem and "vllm or builtin" in problem
    gemma2 = _folder(tmp_path, "g", "Gemma2ForCausalLM")
    assert ollama_engine.check(gemma2, adapter, quantize=None) == []
    [problem] = ollama_engine.check(gemma2, adapter, quantize="q4_K_M")
    assert "drop quantize" in problem and "Gemma2ForCausalLM" in problem
    [problem] = ollama_engine.check(base, None, quantize="q3_K")
    assert "q4_K_M" in problem


def test_check_spots_a_qlora_adapter_with_quantize(tmp_path: Path):
    base = _folder(tmp_path, "b", "Gemma2ForCausalLM")  # a llama one is merged and quantized as a GGUF instead
    [problem] = ollama_engine.check(base, _lora(tmp_path, bits=4), quantize="q4_K_M")
    assert "QLoRA" in problem and "quantize the merged model" in problem
    other = tmp_path / "other"
    other.mkdir()
    [problem] = ollama_engine.check(base, _lora(other, base_name="unsloth/llama-3-8b-bnb-4bit"), quantize="q8_0")
    assert "QLoRA" in problem
