"""An emulator of Ollama's REST API (native ``/api`` and the OpenAI-compatible ``/v1``), at least as strict as Ollama
where that hurts, that really serves the models it creates with transformers + PEFT.

Reached through ``ollama.Client(host=url)`` / ``OLLAMA_HOST``, and OpenAI SDKs at ``url/v1`` with any key. As Ollama:

* blobs are content-addressed (``HEAD``/``POST /api/blobs/sha256:<hex>``): the body is streamed to disk and hashed
  while written; a body whose hash is not the digest is refused (400 ``digest mismatch``);
* ``/api/create`` takes ``files`` (safetensors: ``config.json``, ``*.safetensors`` and a tokenizer) or ``from`` (an
  existing model; a missing one is pulled from the registry, which cannot be reached here, so it fails as a failed
  pull does) plus ``adapters`` (a safetensors LoRA: only on a ``llama`` or ``gemma2`` base, else ``unsupported
  architecture``). Architectures Ollama's converter does not know (``MistralForCausalLM``, dense
  ``Qwen3ForCausalLM``...) are refused. ``files`` may instead hold exactly one ``*.gguf`` (a GGUF model is one file):
  its ``general.architecture`` must be one transformers' GGUF reader loads (else ``unsupported architecture``), it is
  served with ``gguf_file=`` (model and tokenizer, whose chat template comes from ``tokenizer.chat_template``), and
  ``quantize`` applies to F16/F32 GGUFs only. ``quantize`` takes ``q4_K_M``, ``q4_K_S`` or ``q8_0``; the emulator
  records the level and keeps serving in float. Errors before the stream starts are a status; once it has started (the
  default, ``stream`` true) they are an NDJSON ``{"error"}`` line with status 200, as Ollama's are;
* every model has a folder of its own under the store (``models/<id>/model``, and ``adapter`` for a LoRA model)
  with the uploaded files hard-linked from the blobs, so that transformers loads them; a model is loaded on first
  use, two stay loaded (LRU), and one generation runs at a time;
* generation: NDJSON streaming by default, the last chunk with ``done_reason`` and durations in ns; chat renders the
  chat template of the uploaded tokenizer (a Modelfile ``template`` is recorded, not rendered); ``/v1`` does not
  stream unless asked (SSE ending ``data: [DONE]``) and answers errors in OpenAI's shape.

Run: ``python -m services.sandbox.ollama --store DIR [--host 127.0.0.1] [--port 11434]``, or ``serve(store)`` in
a thread of a test.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

#: ``config.json`` architectures Ollama's converter imports from safetensors (convert/convert.go), to the family
#: (``general.architecture``) the converted model gets.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MixtralForCausalLM": "llama",
    "Mistral3ForConditionalGeneration": "mistral3", "Ministral3ForCausalLM": "mistral3",
    "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3", "Gemma3nForConditionalGeneration": "gemma3n",
    "Gemma4ForCausalLM": "gemma4", "Gemma4ForConditionalGeneration": "gemma4",
    "Phi3ForCausalLM": "phi3", "Qwen2ForCausalLM": "qwen2",
    "Qwen2_5_VLForConditionalGeneration": "qwen25vl", "Qwen3VLForConditionalGeneration": "qwen3vl",
    "Qwen3VLMoeForConditionalGeneration": "qwen3vlmoe", "Qwen3NextForCausalLM": "qwen3next",
    "Qwen3_5ForCausalLM": "qwen35", "Olmo3ForCausalLM": "olmo3", "CohereForCausalLM": "command-r",
    "Cohere2ForCausalLM": "cohere2", "GptOssForCausalLM": "gptoss", "DeepseekV3ForCausalLM": "deepseek2",
    "Lfm2ForCausalLM": "lfm2", "NemotronHForCausalLM": "nemotron_h", "BertModel": "bert",
}
#: Families a safetensors LoRA adapter converts for (convert.ConvertAdapter).
ADAPTER_FAMILIES = ("llama", "gemma2")
QUANTIZE_TYPES = {"Q4_K_M", "Q4_K_S", "Q8_0"}
#: ``general.architecture`` values of GGUF files the emulator loads (transformers' GGUF reader, model and tokenizer);
#: used when transformers' own list cannot be imported.
GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3", "falcon", "stablelm",
                      "starcoder2", "nemotron", "gpt2", "bloom")
LOADED_MODELS = 2
DEFAULT_OPTIONS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "num_predict": -1, "num_ctx": 4096}
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}"
_NAME = re.compile(rf"^{_PART}(/{_PART}){{0,2}}(:[A-Za-z0-9_][A-Za-z0-9._-]{{0,79}})?$")


class OllamaError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def normalize(name: str) -> str:
    """``x`` → ``x:latest``, as Ollama names models; a 400 for a name Ollama refuses."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise OllamaError(400, "invalid model name")
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _safetensors_params(path: Path) -> int:
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    total = 0
    for key, meta in header.items():
        if key != "__metadata__":
            n = 1
            for d in meta["shape"]:
                n *= d
            total += n
    return total


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    load_s: float


class OllamaEmulator:
    def __init__(self, store: Path):
        self.store = Path(store)
        for sub in ("blobs", "manifests", "models", "tmp"):
            (self.store / sub).mkdir(parents=True, exist_ok=True)
        self.loaded: collections.OrderedDict[str, Loaded] = collections.OrderedDict()
        self.lock = asyncio.Lock()  # one load or generation at a time
        self.requests: list[tuple[str, str]] = []
        app = FastAPI(title="Ollama emulator")
        app.state.emulator = self
        r = app.add_api_route
        r("/", self.root, methods=["GET", "HEAD"])
        r("/api/version", self.version, methods=["GET"])
        r("/api/blobs/{digest}", self.head_blob, methods=["HEAD"])
        r("/api/blobs/{digest}", self.push_blob, methods=["POST"])
        r("/api/create", self.create, methods=["POST"])
        r("/api/tags", self.tags, methods=["GET"])
        r("/api/ps", self.ps, methods=["GET"])
        r("/api/show", self.show, methods=["POST"])
        r("/api/delete", self.delete, methods=["DELETE"])
        r("/api/generate", self.generate, methods=["POST"])
        r("/api/chat", self.chat, methods=["POST"])
        r("/v1/models", self.v1_models, methods=["GET"])
        r("/v1/chat/completions", self.v1_chat, methods=["POST"])
        r("/v1/completions", self.v1_completions, methods=["POST"])
        app.add_exception_handler(OllamaError, self._error)
        self.app = app

    # -- plumbing ------------------------------------------------------------------------------------------------

    async def _error(self, request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OllamaError)
        if request.url.path.startswith("/v1/"):
            return _openai_error(exc.status, exc.message)
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @staticmethod
    async def _json(request: Request) -> dict:
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as exc:
            raise OllamaError(400, f"invalid character in request body: {exc}") from exc
        if not isinstance(body, dict):
            raise OllamaError(400, "missing request body" if body is None else "invalid request body")
        return body

    def _blob(self, digest: str) -> Path:
        m = _DIGEST.match(digest or "")
        if not m:
            raise OllamaError(400, "invalid digest format")
        return self.store / "blobs" / f"sha256-{m.group(1)}"

    def _manifest_path(self, name: str) -> Path:
        return self.store / "manifests" / f"{quote(name, safe='')}.json"

    def manifests(self) -> list[dict]:
        out = []
        for p in sorted((self.store / "manifests").glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def manifest(self, name: str) -> dict:
        try:
            key = normalize(name)
        except OllamaError:
            raise OllamaError(404, f"model '{name}' not found") from None
        path = self._manifest_path(key)
        if not path.is_file():
            raise OllamaError(404, f"model '{name}' not found")
        return json.loads(path.read_text())

    # -- blobs ---------------------------------------------------------------------------------------------------

    async def root(self) -> Response:
        return Response("Ollama is running", media_type="text/plain")

    async def version(self) -> dict:
        return {"version": "0.13.0"}

    async def head_blob(self, digest: str) -> Response:
        return Response(status_code=200 if self._blob(digest).is_file() else 404)

    async def push_blob(self, digest: str, request: Request) -> Response:
        path = self._blob(digest)
        if path.is_file():
            async for _ in request.stream():
                pass
            return Response(status_code=200)
        tmp = self.store / "tmp" / f"{path.name}.{secrets.token_hex(4)}"
        h = hashlib.sha256()
        try:
            async with await anyio.open_file(tmp, "wb") as f:
                async for chunk in request.stream():
                    h.update(chunk)
                    await f.write(chunk)
            got = f"sha256:{h.hexdigest()}"
            want = "sha256:" + path.name.removeprefix("sha256-")
            if got != want:
                raise OllamaError(400, f"digest mismatch, expected {want!r}, got {got!r}")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return Response(status_code=201)

    # -- create --------------------------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        body = await self._json(request)
        if not body.get("model"):
            raise OllamaError(400, "model is required")
        name = normalize(body["model"])
        for key in ("files", "adapters"):
            value = body.get(key)
            if value is not None and not (isinstance(value, dict) and all(
                    isinstance(k, str) and isinstance(v, str) for k, v in value.items())):
                raise OllamaError(400, f"invalid {key}: a map of file name to digest")
            for fname in value or {}:
                if fname.startswith("/") or ".." in fname.split("/") or not fname:
                    raise OllamaError(400, "file path must be relative")
        stream = body.get("stream", True) is not False
        steps: list[dict] = []

        async def run() -> None:
            steps.extend(await asyncio.to_thread(self._create, name, body))

        if not stream:
            try:
                await run()
            except OllamaError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            return JSONResponse({"status": "success"})

        async def lines() -> AsyncIterator[bytes]:
            yield _line({"status": "parsing model data"})
            try:
                await run()
            except OllamaError as exc:
                yield _line({"error": exc.message})
                return
            for step in steps:
                yield _line(step)
            yield _line({"status": "success"})

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    def _create(self, name: str, body: dict) -> list[dict]:
        steps: list[dict] = []
        files, adapters = body.get("files") or {}, body.get("adapters") or {}
        base: dict | None = None
        if body.get("from"):
            try:
                from_name = normalize(body["from"])
            except OllamaError:
                raise OllamaError(400, "invalid model name") from None
            path = self._manifest_path(from_name)
            if not path.is_file():
                repo, tag = from_name.rsplit(":", 1)
                if "/" not in repo:
                    repo = f"library/{repo}"
                raise OllamaError(400, f'pull model manifest: Get "https://registry.ollama.ai/v2/{repo}/manifests/'
                                       f'{tag}": dial tcp: lookup registry.ollama.ai: no such host')
            base = json.loads(path.read_text())
            steps.append({"status": "using existing layers"})
        elif files:
            base = self._convert(files, steps)
        else:
            raise OllamaError(400, "neither 'from' or 'files' was specified")
        quantize = body.get("quantize")
        level = base.get("quantization_level", "F32")
        if quantize:
            if level not in ("F16", "F32", "BF16"):
                raise OllamaError(400, f"quantization is only supported for F16 and F32 models, not {level}")
            if str(quantize).upper() not in QUANTIZE_TYPES:
                raise OllamaError(400, f"unsupported quantization type {quantize} - supported types are F32, F16, "
                                       "Q4_K_S, Q4_K_M, Q8_0")
            steps.append({"status": f"quantizing {level} model to {str(quantize).upper()}"})
            level = str(quantize).upper()
        adapter_files: dict[str, str] = {}
        if adapters:
            if any(n.endswith(".gguf") for n in adapters):
                if len(adapters) != 1:
                    raise OllamaError(400, "only one GGUF adapter is supported")
                raise OllamaError(400, "this emulator serves safetensors adapters only; convert_lora_to_gguf.py "
                                       "adapters need a real Ollama")
            if base.get("adapters"):
                raise OllamaError(400, "only one adapter is supported: create the adapter model from the base")
            missing = [f for f in ("adapter_model.safetensors", "adapter_config.json") if f not in adapters]
            if missing:
                raise OllamaError(400, f"adapters must include {', '.join(missing)}")
            if base.get("family") not in ADAPTER_FAMILIES:
                raise OllamaError(400, "unsupported architecture")
            for digest in adapters.values():
                self._need_blob(digest)
            try:
                cfg = json.loads(self._blob(adapters["adapter_config.json"]).read_text())
                assert isinstance(cfg, dict)
            except (ValueError, AssertionError):
                raise OllamaError(400, "adapter_config.json is not a JSON object") from None
            if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
                raise OllamaError(400, "unsupported adapter type: only LoRA adapters convert")
            steps.append({"status": "converting adapter"})
            adapter_files = dict(adapters)
        params = dict(base.get("parameters") or {})
        if isinstance(body.get("parameters"), dict):
            params.update(body["parameters"])
        manifest = {
            "name": name, "modified_at": _now(), "format": base.get("format", "safetensors"),
            "gguf": base.get("gguf"),
            "architecture": base["architecture"], "family": base["family"],
            "parameter_size": base["parameter_size"], "quantization_level": level,
            "files": dict(base["files"]), "adapters": adapter_files or dict(base.get("adapters") or {}),
            "template": body.get("template", base.get("template")),
            "system": body.get("system", base.get("system")),
            "license": body.get("license", base.get("license")),
            "parameters": params, "from": body.get("from"),
        }
        layers = {**manifest["files"], **manifest["adapters"]}
        manifest["size"] = sum(self._blob(d).stat().st_size for d in layers.values())
        manifest["digest"] = hashlib.sha256(json.dumps(
            {k: v for k, v in manifest.items() if k != "modified_at"}, sort_keys=True).encode()).hexdigest()
        folder = self.store / "models" / hashlib.sha256(name.encode()).hexdigest()[:16]
        staging = folder.with_name(folder.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        self._materialise(manifest["files"], staging / "model")
        if manifest["adapters"]:
            self._materialise(manifest["adapters"], staging / "adapter")
        old = self._manifest_path(name)
        if old.is_file():
            self._evict(name)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)
        manifest["folder"] = str(folder)
        steps.append({"status": "writing manifest"})
        tmp = old.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, old)
        return steps

    def _need_blob(self, digest: str) -> Path:
        try:
            path = self._blob(digest)
        except OllamaError:
            raise OllamaError(400, f"invalid digest format: {digest!r}") from None
        if not path.is_file():
            raise OllamaError(400, f"open {path.name}: no such file or directory: upload the blob {digest} first "
                                   "(POST /api/blobs/<digest>)")
        return path

    def _convert(self, files: dict[str, str], steps: list[dict]) -> dict:
        if any(n.endswith(".gguf") for n in files):
            return self._convert_gguf(files, steps)
        for digest in files.values():
            self._need_blob(digest)
        weights = [n for n in files if n.endswith(".safetensors")]
        if not weights:
            raise OllamaError(400, "unknown file type: files must hold *.safetensors weights (or a *.gguf)")
        if "config.json" not in files:
            raise OllamaError(400, "open config.json: file does not exist")
        if "tokenizer.json" not in files and "tokenizer.model" not in files:
            raise OllamaError(400, "unknown tokenizer format: files must include tokenizer.json or tokenizer.model")
        try:
            config = json.loads(self._blob(files["config.json"]).read_text())
            assert isinstance(config, dict)
        except (ValueError, AssertionError, UnicodeDecodeError):
            raise OllamaError(400, "config.json is not a JSON object") from None
        archs = config.get("architectures") or []
        arch = archs[0] if archs else None
        if arch not in ARCHITECTURES:
            raise OllamaError(400, f"unsupported architecture {arch!r}")
        steps.append({"status": "converting model"})
        try:
            params = sum(_safetensors_params(self._blob(files[w])) for w in weights)
        except (OSError, ValueError, KeyError) as exc:
            raise OllamaError(400, f"invalid safetensors file: {exc}") from None
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
        level = {"float16": "F16", "bfloat16": "BF16"}.get(dtype, "F32")
        return {"architecture": arch, "family": ARCHITECTURES[arch], "parameter_size": _human(params),
                "quantization_level": level, "files": dict(files), "format": "safetensors"}

    @staticmethod
    def _gguf_architectures() -> tuple[str, ...]:
        try:
            from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
        except ImportError:
            return GGUF_ARCHITECTURES
        return tuple(a for a in GGUF_SUPPORTED_ARCHITECTURES if a in GGUF_ARCHITECTURES)

    def _convert_gguf(self, files: dict[str, str], steps: list[dict]) -> dict:
        """A GGUF model: exactly one ``*.gguf`` file, read with ``gguf.GGUFReader``."""
        import gguf

        if len(files) != 1:
            raise OllamaError(400, "invalid model: a GGUF model is a single *.gguf file; put nothing else in files")
        [(fname, digest)] = files.items()
        path = self._need_blob(digest)
        try:
            reader = gguf.GGUFReader(path)
            arch_field = reader.fields.get("general.architecture")
            arch = str(arch_field.contents()) if arch_field is not None else None
            type_field = reader.fields.get("general.file_type")
            file_type = int(type_field.contents()) if type_field is not None else None
            params = sum(int(t.n_elements) for t in reader.tensors)
            tensor_types = [t.tensor_type.name for t in reader.tensors if len(t.shape) >= 2]
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise OllamaError(400, f"invalid file magic: not a GGUF file ({exc})") from None
        if arch not in self._gguf_architectures():
            raise OllamaError(400, f"unsupported architecture {arch!r}")
        if file_type is not None:
            try:
                level = gguf.LlamaFileType(file_type).name.removeprefix("ALL_").removeprefix("MOSTLY_")
            except ValueError:
                level = f"type {file_type}"
        else:
            level = max(set(tensor_types), key=tensor_types.count) if tensor_types else "F32"
        steps.append({"status": "parsing GGUF"})
        return {"architecture": arch, "family": arch, "parameter_size": _human(params),
                "quantization_level": level, "files": {fname: digest}, "format": "gguf", "gguf": fname}

    def _materialise(self, files: dict[str, str], into: Path) -> None:
        for fname, digest in files.items():
            dest = into / fname
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self._blob(digest), dest)
            except OSError:
                shutil.copyfile(self._blob(digest), dest)

    # -- listing, show, delete -----------------------------------------------------------------------------------

    @staticmethod
    def _details(m: dict) -> dict:
        return {"parent_model": m.get("from") or "", "format": m["format"], "family": m["family"],
                "families": [m["family"]], "parameter_size": m["parameter_size"],
                "quantization_level": m["quantization_level"]}

    async def tags(self) -> dict:
        return {"models": [{"name": m["name"], "model": m["name"], "modified_at": m["modified_at"],
                            "size": m["size"], "digest": m["digest"], "details": self._details(m)}
                           for m in self.manifests()]}

    async def ps(self) -> dict:
        out = []
        for name in self.loaded:
            with _suppress():
                m = self.manifest(name)
                out.append({"name": name, "model": name, "size": m["size"], "digest": m["digest"],
                            "details": self._details(m), "expires_at": _now(), "size_vram": 0})
        return {"models": out}

    async def show(self, request: Request) -> dict:
        body = await self._json(request)
        name = body.get("model") or body.get("name")
        if not name:
            raise OllamaError(400, "model is required")
        m = self.manifest(name)
        params = "\n".join(f"{k} {json.dumps(v) if not isinstance(v, str) else v}"
                           for k, v in (m.get("parameters") or {}).items())
        modelfile = f"# Modelfile generated by \"ollama show\"\nFROM {m['folder']}/model\n"
        if m["adapters"]:
            modelfile += f"ADAPTER {m['folder']}/adapter\n"
        return {"license": m.get("license") or "", "modelfile": modelfile, "parameters": params,
                "template": m.get("template") or "{{ .Prompt }}", "system": m.get("system") or "",
                "details": self._details(m), "modified_at": m["modified_at"],
                "model_info": {"general.architecture": m["family"], "general.basename": m["architecture"]},
                "capabilities": ["completion"]}

    async def delete(self, request: Request) -> Response:
        body = await self._json(request)
        name = body.get("model") or body.get("name")
        if not name:
            raise OllamaError(400, "model is required")
        m = self.manifest(name)
        self._evict(m["name"])
        self._manifest_path(m["name"]).unlink(missing_ok=True)
        shutil.rmtree(m["folder"], ignore_errors=True)
        used = {d for o in self.manifests() for d in {**o["files"], **o["adapters"]}.values()}
        for digest in {**m["files"], **m["adapters"]}.values():
            if digest not in used:
                self._blob(digest).unlink(missing_ok=True)
        return Response(status_code=200)

    def _evict(self, name: str) -> None:
        self.loaded.pop(name, None)

    # -- loading and generating ----------------------------------------------------------------------------------

    def _load(self, m: dict) -> Loaded:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if m["name"] in self.loaded:
            self.loaded.move_to_end(m["name"])
            return self.loaded[m["name"]]
        started = time.monotonic()
        folder = Path(m["folder"])
        device = "cuda" if torch.cuda.is_available() else "cpu"
        extra = {"gguf_file": m["gguf"]} if m.get("gguf") else {}
        tokenizer = AutoTokenizer.from_pretrained(folder / "model", **extra)
        model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32, **extra)
        if m["adapters"]:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, folder / "adapter")
        model.to(device).eval()
        loaded = Loaded(model, tokenizer, time.monotonic() - started)
        self.loaded[m["name"]] = loaded
        while len(self.loaded) > LOADED_MODELS:
            self.loaded.popitem(last=False)
        return loaded

    def _render(self, m: dict, loaded: Loaded, messages: list[dict]) -> str:
        tok = loaded.tokenizer
        if m.get("system") and not any(x.get("role") == "system" for x in messages):
            messages = [{"role": "system", "content": m["system"]}, *messages]
        if getattr(tok, "chat_template", None):
            try:
                return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            except Exception as exc:
                raise OllamaError(400, f"template: {exc}") from exc
        return "".join(str(x.get("content") or "") for x in messages)  # Ollama's default {{ .Prompt }}

    @staticmethod
    def _options(m: dict, options: Any) -> dict:
        opts = dict(DEFAULT_OPTIONS)
        opts.update(m.get("parameters") or {})
        if options is not None and not isinstance(options, dict):
            raise OllamaError(400, "options must be an object")
        opts.update({k: v for k, v in (options or {}).items() if v is not None})
        for key in ("temperature", "top_p"):
            if not isinstance(opts.get(key), int | float):
                raise OllamaError(400, f"option {key!r} must be a number")
        for key in ("top_k", "num_predict", "num_ctx"):
            if not isinstance(opts.get(key), int) or isinstance(opts.get(key), bool):
                raise OllamaError(400, f"option {key!r} must be an integer")
        stop = opts.get("stop") or []
        opts["stop"] = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str) and s]
        return opts

    async def _run(self, name: str, prompt: str | list[dict] | None, options: Any, *, raw: bool = False,
                   system: str | None = None) -> tuple[Loaded | None, dict]:
        """Generate for ``prompt`` (text, or chat messages); a dict of text, token counts, durations, reason."""
        m = self.manifest(name)
        opts = self._options(m, options)
        started = time.monotonic()
        async with self.lock:
            fresh = m["name"] not in self.loaded
            try:
                loaded = await asyncio.to_thread(self._load, m)
            except Exception as exc:
                raise OllamaError(500, f"llama runner process has terminated: {exc}") from exc
            load_ns = int(loaded.load_s * 1e9) if fresh else 0
            if prompt is None or prompt == "" or prompt == []:
                return loaded, {"text": "", "prompt_n": 0, "eval_n": 0, "reason": "load", "load_ns": load_ns,
                                "total_ns": int((time.monotonic() - started) * 1e9), "prompt_ns": 0, "eval_ns": 0}
            if isinstance(prompt, list):
                text = self._render(m, loaded, prompt)
            elif raw:
                text = prompt
            else:
                msgs = [{"role": "system", "content": system}] if system else []
                text = self._render(m, loaded, [*msgs, {"role": "user", "content": prompt}])
            out = await asyncio.to_thread(self._generate, m, loaded, text, opts)
        out.update(load_ns=load_ns, total_ns=int((time.monotonic() - started) * 1e9))
        return loaded, out

    def _generate(self, m: dict, loaded: Loaded, text: str, opts: dict) -> dict:
        import torch

        tok, model = loaded.tokenizer, loaded.model
        ids = tok(text, add_special_tokens=not bool(getattr(tok, "chat_template", None)))["input_ids"]
        cfg = getattr(model, "config", None)
        ctx = min(opts["num_ctx"], getattr(cfg, "max_position_embeddings", None) or opts["num_ctx"])
        ids = ids[-(ctx - 1):]  # Ollama truncates the prompt to fit the context
        room = ctx - len(ids)
        max_new = room if opts["num_predict"] < 0 else min(opts["num_predict"], room)
        t0 = time.monotonic()
        if max_new <= 0:
            return {"text": "", "prompt_n": len(ids), "eval_n": 0, "reason": "length",
                    "prompt_ns": 0, "eval_ns": 0}
        device = next(model.parameters()).device
        input_ids = torch.tensor([ids], device=device)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                                  "max_new_tokens": max_new, "pad_token_id": pad}
        if opts["temperature"] <= 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=float(opts["temperature"]), top_p=float(opts["top_p"]),
                          top_k=int(opts["top_k"]))
        if opts["stop"]:
            kwargs.update(stop_strings=opts["stop"], tokenizer=tok)
        if opts.get("seed") is not None:
            torch.manual_seed(int(opts["seed"]))
        with torch.inference_mode():
            new = model.generate(**kwargs)[0, len(ids):].tolist()
        eval_ns = int((time.monotonic() - t0) * 1e9)
        eos = {tok.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        hit_eos = bool(new) and new[-1] in eos
        out = tok.decode(new, skip_special_tokens=True)
        first = min((i for i in (out.find(s) for s in opts["stop"]) if i >= 0), default=-1)
        stopped = first >= 0
        if stopped:
            out = out[:first]
        reason = "stop" if stopped or hit_eos or len(new) < max_new else "length"
        return {"text": out, "prompt_n": len(ids), "eval_n": len(new), "reason": reason,
                "prompt_ns": max(1, eval_ns // 10), "eval_ns": eval_ns, "ids": new}

    @staticmethod
    def _pieces(loaded: Loaded | None, out: dict) -> list[str]:
        """The answer cut into per-token pieces (what a stream sends), joined back to exactly ``text``."""
        text = out["text"]
        if not text or loaded is None:
            return [text] if text else []
        pieces, sent = [], 0
        ids = out.get("ids") or []
        for i in range(1, len(ids) + 1):
            prefix = loaded.tokenizer.decode(ids[:i], skip_special_tokens=True)
            end = min(len(prefix), len(text))
            if end > sent and not prefix[:end].endswith("\ufffd"):
                pieces.append(text[sent:end])
                sent = end
        if sent < len(text):
            pieces.append(text[sent:])
        return pieces

    @staticmethod
    def _final(out: dict) -> dict:
        return {"done": True, "done_reason": out["reason"], "total_duration": out["total_ns"],
                "load_duration": out["load_ns"], "prompt_eval_count": out["prompt_n"],
                "prompt_eval_duration": out["prompt_ns"], "eval_count": out["eval_n"],
                "eval_duration": out["eval_ns"]}

    async def generate(self, request: Request) -> Response:
        body = await self._json(request)
        if not body.get("model"):
            raise OllamaError(400, "model is required")
        name = body["model"]
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise OllamaError(400, "prompt must be a string")
        self.manifest(name)
        return await self._answer(name, body, prompt, lambda piece: {"response": piece},
                                  raw=bool(body.get("raw")), system=body.get("system"))

    async def chat(self, request: Request) -> Response:
        body = await self._json(request)
        if not body.get("model"):
            raise OllamaError(400, "model is required")
        messages = body.get("messages") or []
        if not isinstance(messages, list) or not all(isinstance(x, dict) and isinstance(x.get("role"), str)
                                                     for x in messages):
            raise OllamaError(400, "messages must be a list of {role, content}")
        self.manifest(body["model"])
        convo = [{"role": x["role"], "content": x.get("content") or ""} for x in messages]
        return await self._answer(body["model"], body, convo,
                                  lambda piece: {"message": {"role": "assistant", "content": piece}})

    async def _answer(self, name: str, body: dict, prompt: Any, shape, **kw) -> Response:
        model = self.manifest(name)["name"]
        if body.get("stream", True) is False:
            _, out = await self._run(name, prompt, body.get("options"), **kw)
            return JSONResponse({"model": model, "created_at": _now(), **shape(out["text"]), **self._final(out)})

        async def lines() -> AsyncIterator[bytes]:
            try:
                loaded, out = await self._run(name, prompt, body.get("options"), **kw)
            except OllamaError as exc:
                yield _line({"error": exc.message})
                return
            for piece in self._pieces(loaded, out):
                yield _line({"model": model, "created_at": _now(), **shape(piece), "done": False})
            yield _line({"model": model, "created_at": _now(), **shape(""), **self._final(out)})

        # Validate the options before the stream starts, so a bad request is a status, as in Ollama.
        self._options(self.manifest(name), body.get("options"))
        return StreamingResponse(lines(), media_type="application/x-ndjson")

    # -- OpenAI compatibility ------------------------------------------------------------------------------------

    async def v1_models(self) -> dict:
        return {"object": "list", "data": [
            {"id": m["name"], "object": "model", "owned_by": "library",
             "created": int(datetime.fromisoformat(m["modified_at"].replace("Z", "+00:00")).timestamp())}
            for m in self.manifests()]}

    @staticmethod
    def _v1_options(body: dict) -> dict:
        opts: dict[str, Any] = {}
        for src, dst in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                         ("stop", "stop")):
            if body.get(src) is not None:
                opts[dst] = body[src]
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None:
            if not isinstance(max_tokens, int) or max_tokens < 1:
                raise OllamaError(400, "max_tokens must be a positive integer")
            opts["num_predict"] = max_tokens
        if "temperature" in opts and (not isinstance(opts["temperature"], int | float)
                                      or not 0 <= opts["temperature"] <= 2):
            raise OllamaError(400, "temperature must be between 0 and 2")
        return opts

    def _v1_model(self, body: dict) -> str:
        if not body.get("model"):
            raise OllamaError(400, "model is required")
        try:
            return self.manifest(body["model"])["name"]
        except OllamaError:
            raise OllamaError(404, f'model "{body["model"]}" not found, try pulling it first') from None

    async def v1_chat(self, request: Request) -> Response:
        body = await self._json(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise OllamaError(400, "invalid message format: messages must be a non-empty list")
        convo = []
        for x in messages:
            if not isinstance(x, dict) or not isinstance(x.get("role"), str):
                raise OllamaError(400, "invalid message format")
            content = x.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
            convo.append({"role": x["role"], "content": content or ""})
        model = self._v1_model(body)
        return await self._v1_answer(body, model, convo, "chat")

    async def v1_completions(self, request: Request) -> Response:
        body = await self._json(request)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise OllamaError(400, "invalid type for 'prompt' field: a single string")
        model = self._v1_model(body)
        return await self._v1_answer(body, model, prompt, "text")

    async def _v1_answer(self, body: dict, model: str, prompt: Any, kind: str) -> Response:
        opts = self._v1_options(body)
        self._options(self.manifest(model), opts)
        raw = False  # Ollama's /v1/completions is a non-raw generate: the model's template applies
        created = int(time.time())
        rid = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{secrets.randbelow(1000)}"
        obj = "chat.completion" if kind == "chat" else "text_completion"

        def finish(reason: str) -> str:
            return "length" if reason == "length" else "stop"

        def usage(out: dict) -> dict:
            return {"prompt_tokens": out["prompt_n"], "completion_tokens": out["eval_n"],
                    "total_tokens": out["prompt_n"] + out["eval_n"]}

        if not body.get("stream"):
            _, out = await self._run(model, prompt, opts, raw=raw)
            choice = ({"index": 0, "message": {"role": "assistant", "content": out["text"]},
                       "finish_reason": finish(out["reason"])} if kind == "chat" else
                      {"index": 0, "text": out["text"], "finish_reason": finish(out["reason"])})
            return JSONResponse({"id": rid, "object": obj, "created": created, "model": model,
                                 "system_fingerprint": "fp_ollama", "choices": [choice], "usage": usage(out)})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(piece: str | None, reason: str | None) -> bytes:
            if kind == "chat":
                delta = {"role": "assistant", "content": piece or ""} if reason is None else {}
                choice = {"index": 0, "delta": delta, "finish_reason": reason}
            else:
                choice = {"index": 0, "text": piece or "", "finish_reason": reason}
            return _sse({"id": rid, "object": f"{obj}.chunk" if kind == "chat" else obj, "created": created,
                         "model": model, "system_fingerprint": "fp_ollama", "choices": [choice]})

        async def events() -> AsyncIterator[bytes]:
            try:
                loaded, out = await self._run(model, prompt, opts, raw=raw)
            except OllamaError as exc:
                yield _sse({"error": {"message": exc.message, "type": _error_type(exc.status), "param": None,
                                      "code": None}})
                yield b"data: [DONE]\n\n"
                return
            for piece in self._pieces(loaded, out):
                yield chunk(piece, None)
            yield chunk(None, finish(out["reason"]))
            if include_usage:
                yield _sse({"id": rid, "object": f"{obj}.chunk" if kind == "chat" else obj, "created": created,
                            "model": model, "system_fingerprint": "fp_ollama", "choices": [],
                            "usage": usage(out)})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OllamaError | OSError | ValueError | KeyError)


def _line(obj: dict) -> bytes:
    return (json.dumps(obj) + "\n").encode()


def _sse(obj: dict) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _error_type(status: int) -> str:
    return {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")


def _openai_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": _error_type(status), "param": None, "code": None}},
                        status_code=status)


def create_app(store: Path) -> FastAPI:
    """The emulator's ASGI app, its state on disk under ``store``; ``app.state.emulator`` is the ``OllamaEmulator``."""
    return OllamaEmulator(Path(store)).app


def serve(store: Path, host: str = "127.0.0.1", port: int = 0, *, timeout_s: float = 30.0):
    """Run the emulator in a daemon thread; return ``(server, url)``. Stop it with ``server.should_exit = True``
    (then join ``server.thread``)."""
    import socket

    import uvicorn

    if port == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(store), host=host, port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="ollama-emulator", daemon=True)
    server.thread = thread  # type: ignore[attr-defined]
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the Ollama emulator did not start on {host}:{port}")
        time.sleep(0.05)
    return server, f"http://{host}:{port}"


def main(argv: Iterable[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="An emulator of Ollama's REST API that serves with transformers.")
    parser.add_argument("--store", type=Path, required=True, help="where blobs, manifests and model folders live")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    args = parser.parse_args(list(argv) if argv is not None else None)
    uvicorn.run(create_app(args.store), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
