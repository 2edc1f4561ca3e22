"""The built-in server against vLLM on the same tiny model and LoRA adapter: the same 64 prompts through each, sent
``--concurrency`` at a time through the OpenAI API, timed per request.

    .venv/bin/python bench/serving.py [--prompts 64] [--concurrency 8] [--max-tokens 32]

vLLM comes from TUNEFLEET_VLLM_PYTHON or .serving/vllm (``tunefleet serving install vllm --venv .serving/vllm``).
Prints tokens/s and p50/p99 latency for each, and ends with one line
``builtin_tps=… vllm_tps=… vllm_over_builtin=…``. The model is random and tiny (hidden 128, 2 heads, head dim 64;
vLLM's CPU attention needs at least 32), so the figures compare the engines' overheads and batching, not a real
model's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import Processes, say, wait_http  # noqa: E402
from services.cli.embedded import free_port as _free_port  # noqa: E402
from services.model_registry.serving import vllm_engine  # noqa: E402
from trainer.tiny_model import CAPITALS, build_tiny_model  # noqa: E402


def _adapter(base: str, out: Path) -> str:
    """A LoRA adapter whose weights change the answers (peft's default init would leave them equal to the base's)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                      init_lora_weights=False))
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


def _prompts(n: int) -> list[str]:
    countries = list(CAPITALS)
    return [f"What is the capital of {countries[i % len(countries)]}? Answer {i}:" for i in range(n)]


async def _run(base_url: str, key: str, model: str, prompts: list[str], concurrency: int,
               max_tokens: int) -> dict:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, timeout=600)
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []
    tokens = 0

    async def one(prompt: str) -> None:
        nonlocal tokens
        async with gate:
            started = time.perf_counter()
            answer = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                                     temperature=0.0)
            latencies.append(time.perf_counter() - started)
            tokens += answer.usage.completion_tokens

    await one(prompts[0])  # warm: the first request of an engine pays for lazy set-up
    latencies.clear()
    tokens = 0
    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in prompts))
    elapsed = time.perf_counter() - started
    await client.close()
    ordered = sorted(latencies)
    return {"tps": tokens / elapsed, "tokens": tokens, "seconds": elapsed,
            "p50_ms": statistics.median(ordered) * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    root = ROOT
    python = vllm_engine.find_python(os.environ.get("TUNEFLEET_VLLM_PYTHON"), root / ".serving/vllm")
    if python is None:
        raise SystemExit("vLLM is not installed: tunefleet serving install vllm --venv .serving/vllm")
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    base = build_tiny_model(str(work / "model"), hidden_size=128, heads=2)
    adapter = _adapter(base, work / "adapter")
    prompts = _prompts(args.prompts)
    procs = Processes(work)
    key = secrets.token_urlsafe(16)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "TUNEFLEET_ENGINE_KEY": key}
    results: dict[str, dict] = {}
    try:
        port = _free_port()
        say("starting the built-in server")
        procs.start("builtin", [sys.executable, "-m", "services.model_registry.serving.builtin_server",
                                "--host", "127.0.0.1", "--port", str(port), "--base", base, "--base-name", "base",
                                "--adapter", f"tuned={adapter}"], env | {"PYTHONPATH": str(root)})
        await wait_http(procs, f"http://127.0.0.1:{port}/health", patience=300)
        results["builtin"] = await _run(f"http://127.0.0.1:{port}/v1", key, "tuned", prompts, args.concurrency,
                                        args.max_tokens)
        procs.stop()
        procs.running.clear()

        port = _free_port()
        say("starting vLLM (about a minute on 2 cores)")
        argv = vllm_engine.command(python, base_model=base, served_name="base", port=port,
                                   adapters={"tuned": adapter}, max_lora_rank=16, max_model_len=256,
                                   gpu_memory_utilization=0.9)
        procs.start("vllm", argv, vllm_engine.environment(key, env))
        await wait_http(procs, f"http://127.0.0.1:{port}/health", patience=600)
        results["vllm"] = await _run(f"http://127.0.0.1:{port}/v1", key, "tuned", prompts, args.concurrency,
                                     args.max_tokens)
    finally:
        procs.stop()
    print(f"\n{args.prompts} prompts, {args.concurrency} at a time, up to {args.max_tokens} tokens each, "
          "temperature 0, the same LoRA adapter")
    print(f"{'engine':<10}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, r in results.items():
        print(f"{name:<10}{r['tokens']:>8}{r['seconds']:>10.2f}{r['tps']:>10.1f}{r['p50_ms']:>10.0f}"
              f"{r['p99_ms']:>10.0f}")
    b, v = results["builtin"]["tps"], results["vllm"]["tps"]
    print(f"builtin_tps={b:.1f} vllm_tps={v:.1f} vllm_over_builtin={v / b:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
