"""The engines a serving runs on, started and supervised by the model registry.

* builtin: one ``builtin_server`` process per serving (transformers + PEFT), always available.
* vllm: one vLLM OpenAI server per base model, the adapters of that base loaded into it at run time
  (``/v1/load_lora_adapter``); restarted with a larger ``--max-lora-rank`` when an adapter needs one. With
  ``TUNEFLEET_VLLM_URL`` adapters are loaded into that server instead.
* ollama: the base and the adapter uploaded as blobs and created on ``TUNEFLEET_OLLAMA_URL``.

Each ``start`` returns where the gateway sends calls (``Launched``); the API key of an engine started here is made
here, handed to the engine through its environment and stored for the gateway, never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.cli.embedded import free_port as _free_port
from shared.events import ServeRequested
from shared.serving import ServerType
from shared.settings import Settings

from . import ollama_engine, vllm_engine
from .checks import adapter_rank

log = logging.getLogger(__name__)

#: The model name of the base on engines started here (the adapter is served under the serving's engine_model).
BASE_NAME = "base"
#: The smoke prompt every ready engine must answer, with the adapter differently from the base model.
SMOKE_PROMPT = "The capital of France is"
SMOKE_TOKENS = 8


class EngineFailed(Exception):
    """An engine could not serve: the message is the serving's reason, with the fix where there is one."""


@dataclass
class Launched:
    base_url: str  # the engine's OpenAI base URL, ending in /v1
    engine_model: str  # the model name to send the engine
    base_engine_model: str | None  # the base model's name there (for the smoke comparison); None: no base served
    engine_key: str | None
    details: dict = field(default_factory=dict)


@dataclass
class _Process:
    proc: asyncio.subprocess.Process
    port: int
    key: str
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class _VllmServer:
    base_model: str
    process: _Process | None
    max_rank: int
    port: int | None = None  # kept across restarts: the servings on it keep their base URL and key
    key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    adapters: dict[str, str] = field(default_factory=dict)  # engine model name -> adapter folder
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Engines:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.builtin: dict[str, _Process] = {}  # serving id -> process
        self.vllm: dict[str, _VllmServer] = {}  # base model -> server
        self.vllm_servings: dict[str, tuple[str, str]] = {}  # serving id -> (base model, engine model)
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(120.0, connect=5.0))

    # -- starting --------------------------------------------------------------------------------------------

    async def start(self, cmd: ServeRequested) -> Launched:
        engine_model = f"tunefleet-{cmd.serving_id}"
        if cmd.server_type is ServerType.BUILTIN:
            launched = await self._start_builtin(cmd, engine_model)
        elif cmd.server_type is ServerType.VLLM:
            launched = await self._start_vllm(cmd, engine_model)
        else:
            launched = await self._start_ollama(cmd, engine_model)
        launched.details["smoke"] = await self.smoke(launched)
        return launched

    async def _spawn(self, argv: list[str], name: str, extra_env: dict[str, str], key: str | None = None) -> _Process:
        logs = self.settings.engines_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{name}.log"
        key = key or secrets.token_urlsafe(24)
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "HF_HOME",
                                                             "HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES")}
        env.update(extra_env, TUNEFLEET_ENGINE_KEY=key, VLLM_API_KEY=key, PYTHONUNBUFFERED="1")
        with open(log_path, "ab") as out:  # noqa: ASYNC230 - a local log file, opened once per engine start
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env,
                cwd=str(self.settings.engines_dir), start_new_session=True)
        port = int(argv[argv.index("--port") + 1])
        return _Process(proc=proc, port=port, key=key, log_path=log_path)

    async def _wait_healthy(self, process: _Process, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.serving_start_timeout_s
        while loop.time() < deadline:
            if process.proc.returncode is not None:
                raise EngineFailed(f"{what} exited with code {process.proc.returncode} while starting; the end of its "
                                   f"log:\n{_log_tail(process.log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await self.http.get(f"{process.url}/health", timeout=5)).status_code == 200:
                    return
            await asyncio.sleep(1.0)
        await self._terminate(process)
        raise EngineFailed(f"{what} did not answer /health within {self.settings.serving_start_timeout_s:.0f}s "
                           f"(TUNEFLEET_SERVING_START_TIMEOUT_S); the end of its log:\n{_log_tail(process.log_path)}")

    async def _start_builtin(self, cmd: ServeRequested, engine_model: str) -> Launched:
        host = self.settings.engine_host
        base = cmd.model_path or cmd.base_model
        argv = [sys.executable, "-m", "services.model_registry.serving.builtin_server", "--host", host,
                "--port", str(_free_port(host)), "--base", base, "--base-name", BASE_NAME,
                "--max-new-tokens-limit", str(cmd.options.max_new_tokens_limit)]
        if cmd.options.max_model_len:
            argv += ["--max-model-len", str(cmd.options.max_model_len)]
        if cmd.adapter_path:
            argv += ["--adapter", f"{engine_model}={cmd.adapter_path}"]
        process = await self._spawn(argv, cmd.serving_id, {})
        self.builtin[cmd.serving_id] = process
        await self._wait_healthy(process, "the built-in server")
        return Launched(base_url=f"http://{host}:{process.port}/v1",
                        engine_model=engine_model if cmd.adapter_path else BASE_NAME,
                        base_engine_model=BASE_NAME if cmd.adapter_path else None, engine_key=process.key,
                        details={"pid": process.proc.pid, "port": process.port, "log": str(process.log_path)})

    def _vllm_python(self) -> Path:
        python = vllm_engine.find_python(str(self.settings.vllm_python) if self.settings.vllm_python else None,
                                         self.settings.engines_dir / "vllm")
        if python is None:
            raise EngineFailed("vLLM is not installed on this server: run 'tunefleet serving install vllm' (or set "
                               "TUNEFLEET_VLLM_PYTHON to the Python of an environment that has it, or "
                               "TUNEFLEET_VLLM_URL to a running vLLM server); server_type 'builtin' needs nothing more")
        return python

    async def _start_vllm(self, cmd: ServeRequested, engine_model: str) -> Launched:
        if not cmd.adapter_path:
            raise EngineFailed("serving a full fine-tune on vLLM is not supported yet; use server_type 'builtin'")
        rank = adapter_rank(Path(cmd.adapter_path))
        if self.settings.vllm_url:
            return await self._load_into_external(cmd, engine_model)
        server = self.vllm.setdefault(cmd.base_model, _VllmServer(cmd.base_model, None, 0))
        async with server.lock:
            server.adapters[engine_model] = cmd.adapter_path
            self.vllm_servings[cmd.serving_id] = (cmd.base_model, engine_model)
            needed = vllm_engine.max_lora_rank([adapter_rank(Path(p)) for p in server.adapters.values()])
            running = server.process is not None and server.process.proc.returncode is None
            if running and rank <= server.max_rank:
                await self._load_adapter(server.process.url, server.process.key, engine_model, cmd.adapter_path)
            else:
                if server.process is not None:
                    log.info("restarting vLLM for %s with --max-lora-rank %s", cmd.base_model, needed)
                    await self._terminate(server.process)
                await self._launch_vllm(server, needed, cmd)
            process = server.process
        host = self.settings.engine_host
        return Launched(base_url=f"http://{host}:{process.port}/v1", engine_model=engine_model,
                        base_engine_model=BASE_NAME, engine_key=process.key,
                        details={"pid": process.proc.pid, "port": process.port, "max_lora_rank": server.max_rank,
                                 "log": str(process.log_path), "adapters_on_server": len(server.adapters)})

    async def _launch_vllm(self, server: _VllmServer, max_rank: int, cmd: ServeRequested) -> None:
        python = self._vllm_python()
        server.port = server.port or _free_port(self.settings.engine_host)
        argv = vllm_engine.command(python, base_model=server.base_model, served_name=BASE_NAME, port=server.port,
                                   adapters=dict(server.adapters), max_lora_rank=max_rank,
                                   max_model_len=cmd.options.max_model_len,
                                   gpu_memory_utilization=cmd.options.gpu_memory_utilization)
        argv[argv.index("--host") + 1] = self.settings.engine_host
        env = vllm_engine.environment(server.key, {})
        process = await self._spawn(argv, f"vllm-{cmd.serving_id}", env, key=server.key)
        server.process, server.max_rank = process, max_rank
        await self._wait_healthy(process, "vLLM")

    async def _load_adapter(self, url: str, key: str | None, name: str, path: str) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = await self.http.post(f"{url}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path},
                                        headers=headers)
        if response.status_code != 200 and "already" not in response.text:
            raise EngineFailed(f"vLLM refused the adapter ({response.status_code}): {response.text[:500]}")

    async def _load_into_external(self, cmd: ServeRequested, engine_model: str) -> Launched:
        url = self.settings.vllm_url.rstrip("/").removesuffix("/v1")
        key = self.settings.vllm_api_key.get_secret_value() if self.settings.vllm_api_key else None
        await self._load_adapter(url, key, engine_model, cmd.adapter_path)
        models = (await self.http.get(f"{url}/v1/models",
                                      headers={"Authorization": f"Bearer {key}"} if key else {})).json()
        bases = [m["id"] for m in models.get("data", []) if not m.get("parent")]
        return Launched(base_url=f"{url}/v1", engine_model=engine_model, base_engine_model=bases[0] if bases else None,
                        engine_key=key, details={"external": True})

    async def _start_ollama(self, cmd: ServeRequested, engine_model: str) -> Launched:
        import ollama

        if not self.settings.ollama_url:
            raise EngineFailed("no Ollama server is configured: the operator sets TUNEFLEET_OLLAMA_URL (e.g. "
                               "http://127.0.0.1:11434); or use server_type 'builtin'")
        base_dir = Path(cmd.model_path or cmd.base_model)
        adapter_dir = Path(cmd.adapter_path) if cmd.adapter_path else None
        problems = ollama_engine.check(base_dir, adapter_dir, quantize=cmd.options.quantize)
        if problems:
            raise EngineFailed("; ".join(problems))
        client = ollama.AsyncClient(host=self.settings.ollama_url)
        try:
            created = await ollama_engine.create(client, name=engine_model, base_dir=base_dir,
                                                 adapter_dir=adapter_dir, quantize=cmd.options.quantize)
        except ollama.ResponseError as exc:
            raise EngineFailed(f"Ollama refused the model ({exc.status_code}): {exc.error}") from exc
        return Launched(base_url=f"{self.settings.ollama_url.rstrip('/')}/v1", engine_model=created["model"],
                        base_engine_model=created["base_model"] if adapter_dir else None, engine_key=None,
                        details={"ollama_model": created["model"], "ollama_base": created["base_model"]})

    # -- the smoke prompt ------------------------------------------------------------------------------------

    async def _complete(self, launched: Launched, model: str) -> str:
        headers = {"Authorization": f"Bearer {launched.engine_key or 'none'}"}
        response = await self.http.post(f"{launched.base_url}/completions", headers=headers, json={
            "model": model, "prompt": SMOKE_PROMPT, "max_tokens": SMOKE_TOKENS, "temperature": 0.0})
        if response.status_code != 200:
            raise EngineFailed(f"the engine did not answer the smoke prompt ({response.status_code}): "
                               f"{response.text[:500]}")
        return response.json()["choices"][0]["text"]

    async def smoke(self, launched: Launched) -> dict:
        """The engine answers a smoke prompt, with the adapter differently from the base model: an engine that
        ignores an adapter (vLLM does, silently, when its module names do not match) fails here."""
        answer = await self._complete(launched, launched.engine_model)
        result = {"prompt": SMOKE_PROMPT, "answer": answer}
        if launched.base_engine_model:
            base = await self._complete(launched, launched.base_engine_model)
            result["base_answer"] = base
            if base == answer:
                raise EngineFailed(f"with the adapter the engine answers the smoke prompt {SMOKE_PROMPT!r} exactly as "
                                   f"the base model does ({answer!r}): it is not applying the adapter; check that "
                                   "adapter_config.json's target_modules name modules of the base model")
        return result

    # -- stopping --------------------------------------------------------------------------------------------

    async def _terminate(self, process: _Process) -> None:
        if process.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.proc.pid, 15)
            try:
                await asyncio.wait_for(process.proc.wait(), 20)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.proc.pid, 9)
                await process.proc.wait()

    async def stop(self, serving_id: str, server_type: ServerType, engine_model: str | None) -> None:
        """Stop what serves ``serving_id`` (this registry's process, the adapter on a shared vLLM, the Ollama model);
        a serving already gone is no error."""
        if server_type is ServerType.BUILTIN:
            if process := self.builtin.pop(serving_id, None):
                await self._terminate(process)
        elif server_type is ServerType.VLLM:
            await self._stop_vllm(serving_id)
        elif engine_model and self.settings.ollama_url:
            import ollama

            with contextlib.suppress(ollama.ResponseError):
                await ollama_engine.delete(ollama.AsyncClient(host=self.settings.ollama_url), engine_model)

    async def _stop_vllm(self, serving_id: str) -> None:
        base, engine_model = self.vllm_servings.pop(serving_id, (None, None))
        if self.settings.vllm_url and engine_model:
            key = self.settings.vllm_api_key.get_secret_value() if self.settings.vllm_api_key else None
            url = self.settings.vllm_url.rstrip("/").removesuffix("/v1")
            with contextlib.suppress(httpx.HTTPError):
                await self.http.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": engine_model},
                                     headers={"Authorization": f"Bearer {key}"} if key else {})
            return
        server = self.vllm.get(base) if base else None
        if server is None:
            return
        async with server.lock:
            server.adapters.pop(engine_model, None)
            if server.process is None:
                return
            if not server.adapters:
                await self._terminate(server.process)
                del self.vllm[base]
            else:
                with contextlib.suppress(httpx.HTTPError):
                    await self.http.post(f"{server.process.url}/v1/unload_lora_adapter",
                                         json={"lora_name": engine_model},
                                         headers={"Authorization": f"Bearer {server.process.key}"})

    async def close(self) -> None:
        """Stop every engine process this registry started (the registry restarts them when it comes back)."""
        for process in list(self.builtin.values()):
            await self._terminate(process)
        for server in list(self.vllm.values()):
            if server.process is not None:
                await self._terminate(server.process)
        self.builtin.clear()
        self.vllm.clear()
        self.vllm_servings.clear()
        await self.http.aclose()
