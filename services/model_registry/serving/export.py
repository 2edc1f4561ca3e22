"""Model export behind ``POST /api/models/{id}/export {format: "merged" | "gguf", quantize?: "q8_0" | "f16" | None}``.

* ``merge``: base + PEFT adapter -> one plain transformers folder (safetensors, float32, with the tokenizer).
* ``to_gguf``: a saved transformers folder -> one GGUF file, written with llama.cpp's ``gguf`` package. Only
  ``LlamaForCausalLM`` ("llama") and ``Qwen2ForCausalLM`` ("qwen2") are converted here; llama.cpp's
  ``convert_hf_to_gguf.py`` handles many more.
* ``export``: the two above, laid out under one folder (``merged/``, ``gguf/model-<quantize>.gguf``).

Everything is written under a temporary name and renamed into place, so a reader never sees half a model. Run as a
subprocess with ``python -m services.model_registry.serving.export --base B --adapter A --out OUT --format gguf``;
it keeps ``OUT/export.json`` up to date (``{"status": "running"}``, then ``"done"`` or ``"failed"``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FORMATS = ("merged", "gguf")
QUANTIZE = (None, "f32", "f16", "q8_0")

#: HF architecture -> gguf architecture name.
GGUF_ARCHS = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}

#: ``tokenizer.ggml.pre`` for the split regexes of tokenizer.json pre-tokenizers we recognise.
_LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
_QWEN2_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
_PRE_BY_SPLIT = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


# ----------------------------------------------------------------------------------------------------------- helpers


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing what was there."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(path)
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------------- merge


def merge(base_model: str, adapter_dir: Path, out_dir: Path) -> Path:
    """Merge the PEFT adapter in ``adapter_dir`` into ``base_model`` and save the result into ``out_dir``.

    The model is loaded in float32 on the CPU; the folder gets safetensors weights, the config, the generation config
    and the tokenizer of the adapter folder (the base's when the adapter has none). Returns ``out_dir``.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32, device_map="cpu")
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    merged = model.merge_and_unload()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    except (OSError, ValueError, TypeError) as e:
        log.info("no tokenizer in %s (%s); using the base model's", adapter_dir, e)
        tokenizer = AutoTokenizer.from_pretrained(base_model)

    tmp = _partial(out_dir)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# -------------------------------------------------------------------------------------------------------------- gguf


def _permute(weights, n_head: int, n_head_kv: int | None):
    """llama.cpp's ``LlamaModel.permute``: q/k rows from HF's half-split rotary layout to GGML's interleaved one."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _load_state_dict(model_dir: Path) -> dict[str, Any]:
    """All tensors of the folder's safetensors files, as float32 numpy arrays."""
    import torch
    from safetensors.torch import load_file

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    tensors: dict[str, Any] = {}
    for file in files:
        for name, tensor in load_file(str(file)).items():
            tensors[name] = tensor.to(torch.float32).numpy()
    return tensors


def _rope_theta(config: dict) -> float:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in (None, "default"):
        raise ValueError(
            f"rope type {rope_type!r} is not converted here; llama.cpp's convert_hf_to_gguf.py handles it"
        )
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def _add_hparams(writer, config: dict, arch: str, file_type, name: str) -> None:
    hidden = config["hidden_size"]
    n_head = config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or hidden // n_head
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(hidden)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(file_type)
    if arch == "llama":
        writer.add_rope_dimension_count(head_dim)
    if head_dim != hidden // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _bpe_vocab(model_dir: Path, tok_json: dict, vocab_size: int):
    """Tokens and token types the way llama.cpp's ``get_vocab_base`` lists them."""
    import gguf

    vocab: dict[str, int] = dict(tok_json["model"]["vocab"])
    added = {t["content"]: t for t in tok_json.get("added_tokens", [])}
    for content, tok in added.items():
        vocab[content] = tok["id"]
    reverse = {i: t for t, i in vocab.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL if added[token].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token)
            types.append(gguf.TokenType.NORMAL)
    if max(vocab.values(), default=-1) >= vocab_size:
        raise ValueError(f"the tokenizer in {model_dir} has ids beyond the model's vocab_size {vocab_size}")
    return tokens, types


def _bpe_pre(tok_json: dict, arch: str) -> str:
    """``tokenizer.ggml.pre``: how the text is split before the merges (llama.cpp names)."""
    pre = tok_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if step.get("type") == "Split":
            regex = (step.get("pattern") or {}).get("Regex")
            if regex in _PRE_BY_SPLIT:
                return _PRE_BY_SPLIT[regex]
        if step.get("type") == "ByteLevel" and step.get("use_regex", True) and len(steps) == 1:
            return "gpt-2"
    log.warning("unrecognised pre-tokenizer in tokenizer.json; writing tokenizer.ggml.pre = 'default'")
    return "qwen2" if arch == "qwen2" else "default"


def _add_tokenizer(writer, model_dir: Path, arch: str, vocab_size: int) -> None:
    import gguf

    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        raise ValueError(f"{model_dir} has no tokenizer.json; only tokenizer.json tokenizers are converted here")
    tok_json = json.loads(tok_file.read_text(encoding="utf-8"))
    model = tok_json.get("model") or {}
    pre = json.dumps(tok_json.get("pre_tokenizer") or {})
    if model.get("type") == "BPE" and "ByteLevel" in pre:
        tokens, types = _bpe_vocab(model_dir, tok_json, vocab_size)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(_bpe_pre(tok_json, arch))
        writer.add_token_list(tokens)
        writer.add_token_types(types)
    elif model.get("type") == "BPE" and model.get("byte_fallback"):
        # A sentencepiece-style (Llama 2) vocabulary, as convert_hf_to_gguf.py's _set_vocab_llama_hf writes it.
        vocab = gguf.LlamaHfVocab(model_dir)
        tokens, scores, types = [], [], []
        for text, score, toktype in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(toktype)
        if len(tokens) > vocab_size:
            raise ValueError(f"the tokenizer in {model_dir} has more tokens than the model's vocab_size {vocab_size}")
        for i in range(len(tokens), vocab_size):
            tokens.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
    else:
        raise ValueError(
            f"tokenizer model {model.get('type')!r} in {tok_file} is not converted here; "
            "llama.cpp's convert_hf_to_gguf.py handles more tokenizers"
        )
    # merges, bos/eos/unk/pad ids, add_bos/add_eos and the chat template (tokenizer_config.json or chat_template.jinja)
    gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)


def _tensor_data(name: str, data, quantize: str | None):
    """(array, raw_dtype) to hand to ``GGUFWriter.add_tensor`` for the chosen output type."""
    import gguf
    import numpy as np

    if quantize in (None, "f32") or data.ndim < 2 or name.endswith("_norm.weight"):
        return data.astype(np.float32), None
    if quantize == "f16":
        return data.astype(np.float16), None
    # q8_0: rows must be whole 32-value blocks; otherwise fall back to f16, as llama.cpp does
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] != 0:
        log.warning("%s: row length %d is not a multiple of 32, keeping it in f16", name, data.shape[-1])
        return data.astype(np.float16), None
    return gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0), (
        gguf.GGMLQuantizationType.Q8_0
    )


def to_gguf(model_dir: Path, out_file: Path, *, quantize: str | None = None) -> Path:
    """Convert the transformers folder ``model_dir`` into the GGUF file ``out_file``; returns ``out_file``.

    ``quantize``: None or "f32" (float32), "f16" (2-D tensors in float16) or "q8_0" (2-D weight matrices in Q8_0);
    norms and other 1-D tensors stay float32. Raises ValueError for architectures other than LlamaForCausalLM and
    Qwen2ForCausalLM.
    """
    import gguf

    model_dir, out_file = Path(model_dir), Path(out_file)
    if quantize not in QUANTIZE:
        raise ValueError(f"unknown quantize {quantize!r}: use one of f32, f16, q8_0 (or none)")
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    hf_arch = (config.get("architectures") or ["<none>"])[0]
    arch = GGUF_ARCHS.get(hf_arch)
    if arch is None:
        raise ValueError(
            f"GGUF export of architecture {hf_arch!r} is not supported here (only {', '.join(GGUF_ARCHS)}); "
            "llama.cpp's convert_hf_to_gguf.py handles more architectures"
        )
    arch_enum = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)
    n_blocks = config["num_hidden_layers"]
    n_head = config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads") or n_head
    name_map = gguf.get_tensor_name_map(arch_enum, n_blocks)
    file_type = {
        None: gguf.LlamaFileType.ALL_F32,
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[quantize]

    tensors = _load_state_dict(model_dir)
    tied = config.get("tie_word_embeddings", False)

    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(out_file)
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        _add_hparams(writer, config, arch, file_type, model_dir.name)
        _add_tokenizer(writer, model_dir, arch, config["vocab_size"])
        for name, data in tensors.items():
            if name.endswith((".rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")):
                continue
            if name == "lm_head.weight" and tied:
                continue  # llama.cpp reuses token_embd when there is no output tensor
            new_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                raise ValueError(f"cannot map tensor {name!r} of {hf_arch} to a GGUF name")
            if arch == "llama" and name.endswith("q_proj.weight"):
                data = _permute(data, n_head, n_head)
            elif arch == "llama" and name.endswith("k_proj.weight"):
                data = _permute(data, n_head, n_head_kv)
            array, raw_dtype = _tensor_data(new_name, data, quantize)
            writer.add_tensor(new_name, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out_file)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out_file


# ------------------------------------------------------------------------------------------------------------ export


def export(base_model: str, adapter_dir: Path, out_root: Path, fmt: str, quantize: str | None) -> Path:
    """Export ``base_model`` + the adapter under ``out_root``; returns the merged folder or the GGUF file.

    merged -> ``out_root/merged/``; gguf -> ``out_root/merged/`` (made when not there yet), then
    ``out_root/gguf/model-<quantize or f32>.gguf``.
    """
    out_root = Path(out_root)
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: use merged or gguf")
    if quantize not in QUANTIZE:
        raise ValueError(f"unknown quantize {quantize!r}: use one of f32, f16, q8_0 (or none)")
    if fmt == "merged" and quantize not in (None, "f32"):
        raise ValueError("quantize applies to the gguf format only; a merged export is saved in float32")
    merged_dir = out_root / "merged"
    if fmt == "merged" or not (merged_dir / "config.json").is_file():
        merge(base_model, Path(adapter_dir), merged_dir)
    if fmt == "merged":
        return merged_dir
    return to_gguf(merged_dir, out_root / "gguf" / f"model-{quantize or 'f32'}.gguf", quantize=quantize)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.model_registry.serving.export", description=__doc__)
    parser.add_argument("--base", required=True, help="base model: hub id or local folder")
    parser.add_argument("--adapter", required=True, type=Path, help="the PEFT adapter folder")
    parser.add_argument("--out", required=True, type=Path, help="export folder (gets export.json)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--quantize", choices=[q for q in QUANTIZE if q], default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    status_file = args.out / "export.json"
    _write_json_atomic(status_file, {"status": "running", "format": args.format, "quantize": args.quantize})
    result: dict[str, Any] = {"format": args.format, "quantize": args.quantize}
    try:
        path = export(args.base, args.adapter, args.out, args.format, args.quantize)
    except Exception as e:  # reported in export.json for the registry, and on stderr
        log.exception("export failed")
        result.update(status="failed", path=None, error=f"{type(e).__name__}: {e}")
        _write_json_atomic(status_file, result)
        return 1
    result.update(status="done", path=str(path))
    _write_json_atomic(status_file, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
