"""Serving on Ollama through the official ``ollama`` client: what Ollama cannot import is caught before any upload
(``check``), then the base is uploaded as blobs and created once (``tunefleet-base-<hash>``), and the adapter model
is created ``from`` it (``create``); ``delete`` removes the adapter model and leaves the shared base.

What Ollama cannot take as a safetensors adapter (a base other than llama/gemma2, or ``quantize`` with an adapter) is
done the way Ollama's users do it: the adapter is merged into the base (``export.merge``), converted to one F16 GGUF
(``export.to_gguf``) and imported with ``files={"model.gguf": digest}`` (and ``quantize`` passed through); the base is
converted and created the same way, so the two answer comparably. Only the architectures ``export.to_gguf``
converts (``export.GGUF_ARCHS``) go this way."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from services.model_registry.serving import export

#: ``config.json`` architectures Ollama's converter imports from safetensors, to the family it gives them.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MixtralForCausalLM": "llama", "Mistral3ForConditionalGeneration": "mistral3",
    "GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3", "Gemma3nForConditionalGeneration": "gemma3n",
    "Phi3ForCausalLM": "phi3", "Qwen2ForCausalLM": "qwen2", "Qwen2_5_VLForConditionalGeneration": "qwen25vl",
    "Qwen3VLForConditionalGeneration": "qwen3vl", "Qwen3NextForCausalLM": "qwen3next",
    "Olmo3ForCausalLM": "olmo3", "CohereForCausalLM": "command-r", "Cohere2ForCausalLM": "cohere2",
    "GptOssForCausalLM": "gptoss", "DeepseekV3ForCausalLM": "deepseek2", "Lfm2ForCausalLM": "lfm2",
    "NemotronHForCausalLM": "nemotron_h",
}
ADAPTER_FAMILIES = ("llama", "gemma2")
QUANTIZE = ("q4_K_M", "q4_K_S", "q8_0")
BASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
              "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json",
              "vocab.json", "merges.txt")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
_QUANTIZED_NAME = ("bnb-4bit", "bnb-8bit", "4bit", "8bit", "-awq", "-gptq", "int4", "int8")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _qlora(adapter_dir: Path) -> bool:
    """Whether the adapter was trained on a 4/8-bit base (TuneFleet's metadata.json, or the base's name)."""
    for meta in (adapter_dir / "metadata.json", adapter_dir.parent / "metadata.json"):
        if _json(meta).get("quantization_bits") in (4, 8):
            return True
    base = str(_json(adapter_dir / "adapter_config.json").get("base_model_name_or_path") or "").lower()
    return any(tag in base for tag in _QUANTIZED_NAME)


def _arch(base_dir: Path) -> str | None:
    archs = _json(Path(base_dir) / "config.json").get("architectures") if Path(base_dir).is_dir() else None
    return archs[0] if isinstance(archs, list) and archs and isinstance(archs[0], str) else None


def needs_gguf(base_dir: Path, adapter_dir: Path | None, *, quantize: str | None) -> bool:
    """Whether ``create`` merges the adapter and imports a GGUF: an adapter on a base Ollama takes no safetensors
    adapter for, or an adapter with ``quantize``."""
    if adapter_dir is None:
        return False
    return ARCHITECTURES.get(_arch(base_dir) or "") not in ADAPTER_FAMILIES or quantize is not None


def check(base_dir: Path, adapter_dir: Path | None, *, quantize: str | None) -> list[str]:
    """What Ollama would refuse (or get wrong) about this base, adapter and quantization: one sentence per problem,
    each naming the fix. Empty when Ollama can import it."""
    problems: list[str] = []
    base_dir = Path(base_dir)
    if base_dir.is_file():
        problems.append(f"the base model path {base_dir} is a file: point at the folder that holds config.json "
                        "and the *.safetensors weights")
    elif not (base_dir / "config.json").is_file():
        problems.append(f"{base_dir} has no config.json: Ollama imports a Hugging Face folder (config.json, "
                        "*.safetensors, tokenizer); download the base model into a folder first")
    elif not list(base_dir.glob("*.safetensors")):
        problems.append(f"{base_dir} has no *.safetensors weights: save the model with safe_serialization=True")
    archs = _json(base_dir / "config.json").get("architectures") if base_dir.is_dir() else None
    arch = archs[0] if isinstance(archs, list) and archs else None
    family = ARCHITECTURES.get(arch) if arch else None
    if base_dir.is_dir() and (base_dir / "config.json").is_file() and family is None:
        problems.append(f"Ollama cannot import the architecture {arch!r} (its converter does not know it): serve "
                        "this model on vllm or builtin instead")
    if quantize is not None and quantize not in QUANTIZE and quantize.upper() not in {q.upper() for q in QUANTIZE}:
        problems.append(f"Ollama cannot quantize to {quantize!r}: use one of {', '.join(QUANTIZE)}")
    if adapter_dir is None:
        return problems
    adapter_dir = Path(adapter_dir)
    if adapter_dir.is_file():
        problems.append(f"the adapter path {adapter_dir} is a file: point at the folder that holds "
                        "adapter_config.json and adapter_model.safetensors")
        return problems
    for name in ADAPTER_FILES:
        if not (adapter_dir / name).is_file():
            problems.append(f"{adapter_dir} has no {name}: Ollama needs a PEFT LoRA saved with "
                            "save_pretrained(safe_serialization=True)")
    convertible = arch in export.GGUF_ARCHS  # merged and imported as a GGUF by create
    if family is not None and family not in ADAPTER_FAMILIES and not convertible:
        problems.append(f"Ollama takes safetensors adapters only on a llama or gemma2 base, and this base is "
                        f"{arch} ({family}), which TuneFleet cannot merge and convert to GGUF (only "
                        f"{', '.join(export.GGUF_ARCHS)}): serve this model on vllm or builtin instead")
    if quantize is not None and convertible:
        pass  # the adapter is merged and the merged GGUF quantized, which is the fix
    elif quantize is not None:
        if _qlora(adapter_dir):
            problems.append("this adapter was trained on a 4/8-bit (QLoRA) base, and Ollama would quantize the "
                            "float base under it: merge the adapter and quantize the merged model instead")
        else:
            problems.append(f"quantize applies to the base, not to an adapter, so the adapter would run on weights "
                            f"it was not trained on, and TuneFleet cannot merge a {arch} model into a GGUF (only "
                            f"{', '.join(export.GGUF_ARCHS)}): drop quantize, or serve on vllm or builtin")
    return problems


def base_files(base_dir: Path) -> list[Path]:
    """The files of a base that Ollama needs: config, generation config, weights, tokenizer and chat template."""
    return sorted([p for p in base_dir.iterdir() if p.is_file() and (p.name in BASE_FILES
                                                                      or p.suffix == ".safetensors")])


async def _upload(client: Any, paths: list[Path]) -> dict[str, str]:
    return {p.name: await client.create_blob(p) for p in paths}


def _digest_files(paths: list[Path]) -> dict[str, str]:
    out = {}
    for path in paths:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        out[path.name] = f"sha256:{h.hexdigest()}"
    return out


async def _listed(client: Any, tag: str) -> bool:
    listed = {m.model for m in (await client.list()).models}
    return tag in listed or f"{tag}:latest" in listed


async def _create_gguf(client: Any, *, name: str, base_dir: Path, adapter_dir: Path, base_tag: str | None,
                       quantize: str | None, work_dir: Path) -> dict:
    """Merge, convert to an F16 GGUF and create ``name`` from that one file; the base is converted the same way."""
    if base_tag is None:
        paths = [p for p in base_files(base_dir) if p.name == "config.json" or p.suffix == ".safetensors"]
        key = json.dumps({"gguf": "f16", **await asyncio.to_thread(_digest_files, paths)}, sort_keys=True)
        base_tag = f"tunefleet-base-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not await _listed(client, base_tag):
        base_gguf = await asyncio.to_thread(export.to_gguf, base_dir, work_dir / "base.gguf", quantize="f16")
        await client.create(model=base_tag, files={"model.gguf": await client.create_blob(base_gguf)})
    merged = await asyncio.to_thread(export.merge, str(base_dir), Path(adapter_dir), work_dir / "merged")
    model_gguf = await asyncio.to_thread(export.to_gguf, merged, work_dir / "model.gguf", quantize="f16")
    await client.create(model=name, files={"model.gguf": await client.create_blob(model_gguf)}, quantize=quantize)
    return {"model": name, "base_model": base_tag}


async def create(client: Any, *, name: str, base_dir: Path, adapter_dir: Path | None, base_tag: str | None = None,
                 quantize: str | None = None, work_dir: Path | None = None) -> dict:
    """Upload and create the base (once) and then ``name`` from it with the adapter; ``{"model", "base_model"}``.

    When Ollama cannot take the adapter as is (``needs_gguf``), the adapter is merged and imported as one GGUF
    instead, in ``work_dir`` (a temporary folder, removed afterwards, when None).
    ``client`` is an ``ollama.AsyncClient``; its ``ResponseError`` is raised as is."""
    base_dir = Path(base_dir)
    if adapter_dir is not None and needs_gguf(base_dir, adapter_dir, quantize=quantize):
        work = Path(work_dir) if work_dir is not None else None
        if work is not None:
            await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
        else:
            work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="tunefleet-gguf-"))
        try:
            return await _create_gguf(client, name=name, base_dir=base_dir, adapter_dir=Path(adapter_dir),
                                      base_tag=base_tag, quantize=quantize, work_dir=work)
        finally:
            if work_dir is None:
                await asyncio.to_thread(shutil.rmtree, work, True)
    files = await _upload(client, base_files(base_dir))
    if base_tag is None:
        key = json.dumps({k: v for k, v in files.items() if k == "config.json" or k.endswith(".safetensors")},
                         sort_keys=True)
        base_tag = f"tunefleet-base-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not await _listed(client, base_tag):
        await client.create(model=base_tag, files=files)
    if adapter_dir is None:
        if name != base_tag:
            await client.create(model=name, from_=base_tag, quantize=quantize)
        return {"model": name, "base_model": base_tag}
    adapters = await _upload(client, [Path(adapter_dir) / f for f in ADAPTER_FILES])
    await client.create(model=name, from_=base_tag, adapters=adapters)
    return {"model": name, "base_model": base_tag}


async def delete(client: Any, name: str) -> None:
    """Delete ``name``; the shared base stays for the next adapter."""
    await client.delete(name)
