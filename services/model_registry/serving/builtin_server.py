"""The built-in serving engine: a small OpenAI-compatible HTTP server on transformers + PEFT.

Run as its own process::

    TUNEFLEET_ENGINE_KEY=... python -m services.model_registry.serving.builtin_server --host 127.0.0.1 --port 8001 \\
        --base /models/base --base-name base [--adapter NAME=PATH ...] [--max-model-len N] [--max-new-tokens-limit N]

The routes mirror vLLM's OpenAI server so that one client works on both: ``GET /health``, ``GET /v1/models``,
``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream``), ``POST /v1/load_lora_adapter`` and
``POST /v1/unload_lora_adapter``; errors come as ``{"error": {"message", "type", "param", "code"}}``. Everything under
``/v1`` needs ``Authorization: Bearer <TUNEFLEET_ENGINE_KEY>``. One generation runs at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("tunefleet.builtin_server")

KEY_ENV = "TUNEFLEET_ENGINE_KEY"
DEFAULT_MAX_NEW_TOKENS_LIMIT = 4096


# ----------------------------------------------------------------------------------------------------------------------
# Request bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = None


class CompletionRequest(_Sampling):
    prompt: str


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class LoadLoraRequest(_Body):
    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoraRequest(_Body):
    lora_name: str = Field(min_length=1)


# ----------------------------------------------------------------------------------------------------------------------
# Errors


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param


def error_body(status: int, message: str, type_: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": status}}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, "BadRequestError", param)


# ----------------------------------------------------------------------------------------------------------------------
# The engine: the model, its adapters and generation


@dataclass
class Served:
    name: str
    path: str
    tokenizer: Any  # encodes, decodes and renders chats for this model
    chat_template: str | None


@dataclass
class Generated:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


@dataclass
class Engine:
    base_path: str
    base_name: str
    max_model_len: int | None = None
    max_new_tokens_limit: int = DEFAULT_MAX_NEW_TOKENS_LIMIT
    model: Any = None
    device: str = "cpu"
    models: dict[str, Served] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    # -- loading

    def load(self, adapters: list[tuple[str, str]]) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float32 if self.device == "cpu" else "auto"
        started = time.monotonic()
        tokenizer = AutoTokenizer.from_pretrained(self.base_path)
        model = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=dtype)
        model.to(self.device)
        model.eval()
        self.model = model
        if self.max_model_len is None:
            self.max_model_len = _context_length(model.config, tokenizer)
        self.models[self.base_name] = Served(self.base_name, self.base_path, tokenizer,
                                             getattr(tokenizer, "chat_template", None) or None)
        log.info("loaded the base model %s as %r on %s in %.1fs (max_model_len %d)", self.base_path, self.base_name,
                 self.device, time.monotonic() - started, self.max_model_len)
        for name, path in adapters:
            self.load_adapter(name, path)

    def load_adapter(self, name: str, path: str) -> None:
        from peft import PeftModel

        if name in self.models:
            raise bad_request(f"The lora adapter '{name}' has already been loaded.", "lora_name")
        if os.path.exists(path) and not os.path.isfile(os.path.join(path, "adapter_config.json")):
            raise bad_request(f"No adapter at '{path}': the folder needs an adapter_config.json.", "lora_path")
        started = time.monotonic()
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        except Exception as exc:
            if isinstance(self.model, PeftModel) and name in self.model.peft_config:  # best effort: drop a half-load
                with contextlib.suppress(Exception):
                    self.model.delete_adapter(name)
            raise bad_request(f"The adapter at '{path}' does not load: {exc}", "lora_path") from exc
        self.model.to(self.device)
        self.model.eval()
        base = self.models[self.base_name]
        tokenizer = _adapter_tokenizer(path) or base.tokenizer
        template = getattr(tokenizer, "chat_template", None) or base.chat_template
        self.models[name] = Served(name, path, tokenizer, template)
        log.info("loaded the adapter %s as %r in %.1fs", path, name, time.monotonic() - started)

    def unload_adapter(self, name: str) -> None:
        if name == self.base_name or name not in self.models:
            raise APIError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError", "lora_name")
        del self.models[name]
        remaining = [n for n in self.models if n != self.base_name]
        if remaining:
            if name in _active_adapters(self.model):
                self.model.set_adapter(remaining[0])
            self.model.delete_adapter(name)
        else:  # the last adapter: back to the plain base model
            self.model = self.model.unload()
        log.info("unloaded the adapter %r", name)

    # -- requests

    def served(self, name: str) -> Served:
        if name not in self.models:
            raise APIError(404, f"The model `{name}` does not exist.", "NotFoundError", "model")
        return self.models[name]

    def list_models(self) -> dict:
        created = int(time.time())
        data = []
        for m in self.models.values():
            is_base = m.name == self.base_name
            data.append({"id": m.name, "object": "model", "created": created, "owned_by": "tunefleet",
                         "root": m.path, "parent": None if is_base else self.base_name,
                         "max_model_len": self.max_model_len})
        return {"object": "list", "data": data}

    def render_chat(self, served: Served, messages: list[ChatMessage]) -> str:
        if not served.chat_template:
            raise bad_request(f"The model `{served.name}` has no chat template: its tokenizer defines no "
                              "chat_template, so chat completions cannot be rendered. Use /v1/completions with a "
                              "plain prompt, or add a chat_template to the tokenizer (tokenizer_config.json or "
                              "chat_template.jinja).", "messages")
        convo = [{"role": m.role, "content": _content_text(m.content)} for m in messages]
        try:
            return served.tokenizer.apply_chat_template(convo, chat_template=served.chat_template, tokenize=False,
                                                        add_generation_prompt=True)
        except Exception as exc:  # a template that raises (e.g. on a role it does not know)
            raise bad_request(f"The chat template could not render these messages: {exc}", "messages") from exc

    def encode(self, served: Served, text: str, *, special: bool) -> list[int]:
        return list(served.tokenizer(text, add_special_tokens=special)["input_ids"])

    def check_lengths(self, prompt_ids: list[int], max_tokens: int | None, default: int | None) -> int:
        """The number of tokens to generate; a 400 when the request does not fit."""
        assert self.max_model_len is not None
        n = len(prompt_ids)
        if max_tokens is not None and max_tokens > self.max_new_tokens_limit:
            raise bad_request(f"max_tokens ({max_tokens}) is over this server's limit of "
                              f"{self.max_new_tokens_limit} new tokens; ask for fewer.", "max_tokens")
        if n >= self.max_model_len:
            raise bad_request(f"This model's maximum context length is {self.max_model_len} tokens. However, your "
                              f"prompt has {n} tokens, leaving no room for max_tokens; shorten the prompt.",
                              "max_tokens")
        if max_tokens is None:
            room = self.max_model_len - n
            return min(room, self.max_new_tokens_limit) if default is None else min(default, room)
        if n + max_tokens > self.max_model_len:
            raise bad_request(f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                              f"requested {n + max_tokens} tokens ({n} in the messages, {max_tokens} in the "
                              "completion). Please reduce the length of the messages or max_tokens.", "max_tokens")
        return max_tokens

    def _generate_kwargs(self, served: Served, ids: list[int], req: _Sampling, max_new: int) -> dict:
        import torch

        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        tok = served.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                                  "max_new_tokens": max_new, "pad_token_id": pad}
        if req.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=req.temperature, top_p=req.top_p, top_k=0)
        stops = _stops(req.stop)
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=tok)
        return kwargs

    @contextlib.contextmanager
    def _using(self, name: str) -> Iterator[None]:
        """Route the model to ``name``: adapters disabled for the base, else that adapter active."""
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            yield
        elif name == self.base_name:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(name)
            yield

    def _run(self, served: Served, kwargs: dict, seed: int | None) -> list[int]:
        import torch

        if seed is not None:
            torch.manual_seed(seed)
        with torch.inference_mode(), self._using(served.name):
            out = self.model.generate(**kwargs)
        return out[0, kwargs["input_ids"].shape[1]:].tolist()

    async def generate(self, served: Served, ids: list[int], req: _Sampling, max_new: int) -> Generated:
        kwargs = self._generate_kwargs(served, ids, req, max_new)
        async with self.lock:
            new_ids = await asyncio.to_thread(self._run, served, kwargs, req.seed)
        text, count = served.tokenizer.decode(new_ids, skip_special_tokens=True), len(new_ids)
        cut, stopped = _cut_at_stop(text, _stops(req.stop))
        eos = _eos_ids(self.model, served.tokenizer)
        hit_eos = bool(new_ids) and new_ids[-1] in eos
        finish = "stop" if stopped or hit_eos or count < max_new else "length"
        return Generated(cut, len(ids), count, finish)

    async def stream(self, served: Served, ids: list[int], req: _Sampling, max_new: int) -> AsyncIterator[
            tuple[str, str | None, int]]:
        """Yield ``(text piece, finish_reason or None, completion tokens so far)``; the last has the reason."""
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        stops = _stops(req.stop)
        cancel = threading.Event()

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):  # type: ignore[override]
                return cancel.is_set()

        streamer = TextIteratorStreamer(served.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = self._generate_kwargs(served, ids, req, max_new)
        kwargs.update(streamer=streamer, stopping_criteria=StoppingCriteriaList([_Cancel()]))
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["ids"] = self._run(served, kwargs, req.seed)
            except BaseException as exc:
                result["error"] = exc
                streamer.end()

        async with self.lock:
            thread = threading.Thread(target=work, name="builtin-generate", daemon=True)
            thread.start()
            try:
                text, sent, stopped = "", 0, False
                hold = max((len(s) for s in stops), default=1) - 1
                pieces = iter(streamer)
                while True:
                    piece = await asyncio.to_thread(next, pieces, None)
                    if piece is None:
                        break
                    if stopped:
                        continue
                    text += piece
                    cut, stopped = _cut_at_stop(text, stops)
                    if stopped:
                        cancel.set()
                        if len(cut) > sent:
                            yield cut[sent:], None, 0
                        sent = len(cut)
                        continue
                    safe = len(text) - hold if stops else len(text)
                    if safe > sent:
                        yield text[sent:safe], None, 0
                        sent = safe
                await asyncio.to_thread(thread.join)
                if "error" in result:
                    raise result["error"]
                new_ids: list[int] = result["ids"]
                if not stopped and len(text) > sent:
                    yield text[sent:], None, 0
                eos = _eos_ids(self.model, served.tokenizer)
                hit_eos = bool(new_ids) and new_ids[-1] in eos
                finish = "stop" if stopped or hit_eos or len(new_ids) < max_new else "length"
                yield "", finish, len(new_ids)
            finally:
                cancel.set()
                if thread.is_alive():
                    await asyncio.to_thread(thread.join)


def _context_length(config: Any, tokenizer: Any) -> int:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    return value if isinstance(value, int) and 0 < value < 10**7 else 2048


def _adapter_tokenizer(path: str) -> Any | None:
    """The tokenizer saved in the adapter folder, or None when there is none."""
    from transformers import AutoTokenizer

    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer_config.json", "tokenizer.json")):
        return None
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        log.warning("the tokenizer in the adapter folder %s does not load (%s); using the base model's", path, exc)
        return None


def _active_adapters(model: Any) -> list[str]:
    active = getattr(model, "active_adapters", None)
    if callable(active):
        active = active()
    if isinstance(active, str):
        return [active]
    return list(active or [])


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def _stops(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [s for s in ([stop] if isinstance(stop, str) else stop) if s]


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """``text`` cut before its first stop string, and whether one was found."""
    first = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:first], True) if first >= 0 else (text, False)


def _content_text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise bad_request(f"Only text content is supported, not {part.get('type')!r}.", "messages")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


# ----------------------------------------------------------------------------------------------------------------------
# The HTTP app


def create_app(engine: Engine, api_key: str, *, ready: threading.Event | None = None):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

    ready = ready or threading.Event()
    expected = f"Bearer {api_key}".encode()
    app = FastAPI(title="TuneFleet built-in engine", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse(error_body(401, "Unauthorized: a valid 'Authorization: Bearer <key>' header is "
                                                    "required.", "invalid_request_error"), status_code=401)
        return await call_next(request)

    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError):
        return JSONResponse(error_body(exc.status, exc.message, exc.type, exc.param), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        problems, param = [], None
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            name = "body" if err.get("type") == "json_invalid" else ".".join(loc) or "body"
            param = param or name
            problems.append(f"{name}: {err.get('msg', 'invalid')}")
        return JSONResponse(error_body(400, "Invalid request: " + "; ".join(problems), "BadRequestError", param),
                            status_code=400)

    def check_ready() -> None:
        if not ready.is_set():
            raise APIError(503, "The model is still loading.", "ServiceUnavailableError")

    @app.get("/health")
    async def health():
        if not ready.is_set():
            return PlainTextResponse("loading", status_code=503)
        return PlainTextResponse("")

    @app.get("/v1/models")
    async def models():
        check_ready()
        return engine.list_models()

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest):
        check_ready()
        served = engine.served(req.model)
        ids = engine.encode(served, req.prompt, special=True)
        max_new = engine.check_lengths(ids, req.max_tokens, default=16)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return StreamingResponse(_sse(_completion_chunks(engine, served, ids, req, max_new, rid, created)),
                                     media_type="text/event-stream")
        out = await engine.generate(served, ids, req, max_new)
        return {"id": rid, "object": "text_completion", "created": created, "model": req.model,
                "choices": [{"index": 0, "text": out.text, "logprobs": None, "finish_reason": out.finish_reason}],
                "usage": _usage(out.prompt_tokens, out.completion_tokens)}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest):
        check_ready()
        served = engine.served(req.model)
        prompt = engine.render_chat(served, req.messages)
        ids = engine.encode(served, prompt, special=False)
        max_tokens = req.max_tokens if req.max_tokens is not None else req.max_completion_tokens
        max_new = engine.check_lengths(ids, max_tokens, default=None)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return StreamingResponse(_sse(_chat_chunks(engine, served, ids, req, max_new, rid, created)),
                                     media_type="text/event-stream")
        out = await engine.generate(served, ids, req, max_new)
        return {"id": rid, "object": "chat.completion", "created": created, "model": req.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text},
                             "logprobs": None, "finish_reason": out.finish_reason}],
                "usage": _usage(out.prompt_tokens, out.completion_tokens)}

    @app.post("/v1/load_lora_adapter")
    async def load_lora(req: LoadLoraRequest):
        check_ready()
        async with engine.lock:
            await asyncio.to_thread(engine.load_adapter, req.lora_name, req.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(req: UnloadLoraRequest):
        check_ready()
        async with engine.lock:
            await asyncio.to_thread(engine.unload_adapter, req.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{req.lora_name}' removed successfully.")

    return app


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _sse(chunks: AsyncIterator[dict]) -> AsyncIterator[str]:
    try:
        async for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except APIError as exc:
        yield f"data: {json.dumps(error_body(exc.status, exc.message, exc.type, exc.param))}\n\n"
    except Exception as exc:
        log.exception("a streamed generation failed")
        yield f"data: {json.dumps(error_body(500, f'generation failed: {exc}', 'InternalServerError'))}\n\n"
    yield "data: [DONE]\n\n"


def _wants_usage(req: _Sampling) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


async def _completion_chunks(engine: Engine, served: Served, ids: list[int], req: CompletionRequest, max_new: int,
                             rid: str, created: int) -> AsyncIterator[dict]:
    head = {"id": rid, "object": "text_completion", "created": created, "model": req.model}
    async for piece, finish, count in engine.stream(served, ids, req, max_new):
        if piece or finish:
            yield {**head, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}]}
        if finish and _wants_usage(req):
            yield {**head, "choices": [], "usage": _usage(len(ids), count)}


async def _chat_chunks(engine: Engine, served: Served, ids: list[int], req: ChatCompletionRequest, max_new: int,
                       rid: str, created: int) -> AsyncIterator[dict]:
    head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": req.model}
    yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}]}
    async for piece, finish, count in engine.stream(served, ids, req, max_new):
        if piece:
            yield {**head, "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None,
                                        "finish_reason": None}]}
        if finish:
            yield {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}
            if _wants_usage(req):
                yield {**head, "choices": [], "usage": _usage(len(ids), count)}


# ----------------------------------------------------------------------------------------------------------------------
# The process


def _adapter_arg(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--adapter takes NAME=PATH, not {value!r}")
    return name, path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.model_registry.serving.builtin_server",
                                description="TuneFleet's built-in OpenAI-compatible server (transformers + PEFT). "
                                            f"The API key comes from ${KEY_ENV}.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--base", required=True, help="the base model: a local folder or a Hub id")
    p.add_argument("--base-name", required=True, help="the model name the base is served under")
    p.add_argument("--adapter", action="append", default=[], type=_adapter_arg, metavar="NAME=PATH",
                   help="a LoRA adapter folder to serve under NAME (repeatable)")
    p.add_argument("--max-model-len", type=int, default=None, help="prompt + completion tokens (default: the model's)")
    p.add_argument("--max-new-tokens-limit", type=int, default=DEFAULT_MAX_NEW_TOKENS_LIMIT,
                   help="the most max_tokens a request may ask for")
    args = p.parse_args(argv)
    names = [args.base_name] + [name for name, _ in args.adapter]
    if len(set(names)) != len(names):
        p.error("the base name and the adapter names must all differ")
    return args


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    api_key = os.environ.get(KEY_ENV, "")
    if not api_key:
        log.error("set %s to the API key the server requires (it is never taken from the command line)", KEY_ENV)
        return 2
    engine = Engine(base_path=args.base, base_name=args.base_name, max_model_len=args.max_model_len,
                    max_new_tokens_limit=args.max_new_tokens_limit)
    try:
        engine.load(args.adapter)
    except Exception:
        log.exception("loading the model failed")
        return 1
    ready = threading.Event()
    ready.set()
    app = create_app(engine, api_key, ready=ready)
    log.info("serving %s on http://%s:%d/v1", ", ".join(engine.models), args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
