"""Model export: merge an adapter into its base, convert the merged folder to GGUF (read back with transformers' own
GGUF loader), and the subprocess entry with its export.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
gguf = pytest.importorskip("gguf")

from services.model_registry.serving import export as ex  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PROMPT = "What is the capital of France? The capital of France is"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from tests.adapters import make_lora_adapter
    from trainer.tiny_model import build_tiny_model

    root = tmp_path_factory.mktemp("export")
    base = build_tiny_model(str(root / "base"), hidden_size=128, heads=2)
    adapter = make_lora_adapter(base, root / "adapter")
    return root, base, Path(adapter)


@pytest.fixture(scope="module")
def exported(models):
    root, base, adapter = models
    out = root / "out"
    f32 = ex.export(base, adapter, out, "gguf", None)
    q8 = ex.export(base, adapter, out, "gguf", "q8_0")
    return out, f32, q8


def _logits(model, tokenizer, text=PROMPT):
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        return model(ids).logits


def _load_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()


@pytest.fixture(scope="module")
def merged_logits(exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = exported[0]
    model = AutoModelForCausalLM.from_pretrained(str(out / "merged")).eval()
    return _logits(model, AutoTokenizer.from_pretrained(str(out / "merged")))


def test_merge_matches_peft_model(models, exported, merged_logits):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, base, adapter = models
    out = exported[0]
    assert (out / "merged" / "model.safetensors").is_file()
    assert (out / "merged" / "tokenizer.json").is_file()
    assert not (out / "merged.partial").exists()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    expected = _logits(peft_model, AutoTokenizer.from_pretrained(str(adapter)))
    assert torch.allclose(merged_logits, expected, atol=1e-4)
    base_logits = _logits(AutoModelForCausalLM.from_pretrained(base).eval(), AutoTokenizer.from_pretrained(base))
    assert not torch.allclose(base_logits, expected, atol=1e-3), "the adapter should change the answers"


def test_merge_replaces_existing_folder(models, tmp_path):
    _, base, adapter = models
    out = tmp_path / "merged"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert ex.merge(base, adapter, out) == out
    assert (out / "config.json").is_file() and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


def test_gguf_f32_loads_in_transformers_with_same_logits(exported, merged_logits):
    from transformers import AutoTokenizer

    out, f32, _ = exported
    assert f32 == out / "gguf" / "model-f32.gguf" and f32.is_file()
    assert not list((out / "gguf").glob("*.partial"))
    model = _load_gguf(f32)
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 2
    tokenizer = AutoTokenizer.from_pretrained(str(f32.parent), gguf_file=f32.name)
    logits = _logits(model, tokenizer)
    assert logits.shape == merged_logits.shape
    assert torch.allclose(logits, merged_logits, atol=1e-3)


def test_gguf_tokenizer_round_trips(exported):
    from transformers import AutoTokenizer

    out, f32, _ = exported
    hf = AutoTokenizer.from_pretrained(str(out / "merged"))
    from_gguf = AutoTokenizer.from_pretrained(str(f32.parent), gguf_file=f32.name)
    for text in (PROMPT, "Reverse the word: lamp -> pmal. </s> Numbers: 12 13!", "  spaced\nlines\tand tabs"):
        assert from_gguf(text).input_ids == hf(text).input_ids, text
    assert (from_gguf.bos_token_id, from_gguf.eos_token_id, from_gguf.pad_token_id) == (
        hf.bos_token_id,
        hf.eos_token_id,
        hf.pad_token_id,
    )
    messages = [{"role": "user", "content": "Hi"}]
    assert from_gguf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )


def test_gguf_metadata_and_llama_qk_permutation(exported):
    from safetensors.torch import load_file

    out, f32, _ = exported
    reader = gguf.GGUFReader(str(f32))

    def field(key):
        f = reader.fields[key]
        return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]][0]

    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == 2
    assert field("llama.embedding_length") == 128
    assert field("llama.attention.head_count") == 2
    assert field("llama.vocab_size") == 512
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("general.file_type") == int(gguf.LlamaFileType.ALL_F32)
    hf = load_file(str(out / "merged" / "model.safetensors"))
    tensors = {t.name: t for t in reader.tensors}
    q = tensors["blk.0.attn_q.weight"].data
    k = tensors["blk.0.attn_k.weight"].data
    v = tensors["blk.0.attn_v.weight"].data
    hq = hf["model.layers.0.self_attn.q_proj.weight"].numpy()
    hk = hf["model.layers.0.self_attn.k_proj.weight"].numpy()
    assert (q == ex._permute(hq, 2, 2)).all() and not (q == hq).all()
    assert (k == ex._permute(hk, 2, 2)).all()
    assert (v == hf["model.layers.0.self_attn.v_proj.weight"].numpy()).all()


def test_gguf_q8_0_close_and_smaller(exported, merged_logits):
    from transformers import AutoTokenizer

    out, f32, q8 = exported
    assert q8 == out / "gguf" / "model-q8_0.gguf"
    assert q8.stat().st_size < 0.5 * f32.stat().st_size
    reader = gguf.GGUFReader(str(q8))
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    logits = _logits(_load_gguf(q8), AutoTokenizer.from_pretrained(str(q8.parent), gguf_file=q8.name))
    diff = (logits - merged_logits).abs().max().item()
    assert diff < 0.1 * merged_logits.abs().max().item(), diff
    assert diff > 0  # really quantized


def test_gguf_f16(exported, merged_logits, tmp_path):
    out = exported[0]
    f16 = ex.to_gguf(out / "merged", tmp_path / "model-f16.gguf", quantize="f16")
    from transformers import AutoTokenizer

    logits = _logits(_load_gguf(f16), AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=f16.name))
    assert (logits - merged_logits).abs().max().item() < 0.02 * merged_logits.abs().max().item()


def test_unsupported_architecture_refused(exported, tmp_path):
    model_dir = tmp_path / "gpt2ish"
    shutil.copytree(exported[0] / "merged", model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["GPT2LMHeadModel"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as err:
        ex.to_gguf(model_dir, tmp_path / "x.gguf")
    assert "convert_hf_to_gguf.py" in str(err.value)
    assert not list(tmp_path.glob("x.gguf*"))


def test_bad_arguments_refused(models, tmp_path):
    _, base, adapter = models
    with pytest.raises(ValueError, match="format"):
        ex.export(base, adapter, tmp_path, "onnx", None)
    with pytest.raises(ValueError, match="quantize"):
        ex.export(base, adapter, tmp_path, "gguf", "q4_k")
    with pytest.raises(ValueError, match="gguf format only"):
        ex.export(base, adapter, tmp_path, "merged", "q8_0")


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.model_registry.serving.export", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_subprocess_writes_export_json_done(models, tmp_path):
    _, base, adapter = models
    out = tmp_path / "job"
    proc = _run_cli("--base", base, "--adapter", str(adapter), "--out", str(out), "--format", "gguf",
                    "--quantize", "q8_0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((out / "export.json").read_text())
    assert status == {"status": "done", "format": "gguf", "quantize": "q8_0",
                      "path": str(out / "gguf" / "model-q8_0.gguf")}
    assert Path(status["path"]).is_file() and (out / "merged" / "config.json").is_file()
    assert not list(out.glob("*.partial"))


def test_subprocess_writes_export_json_failed(tmp_path):
    out = tmp_path / "job"
    proc = _run_cli("--base", str(tmp_path / "missing"), "--adapter", str(tmp_path / "nope"), "--out", str(out),
                    "--format", "merged")
    assert proc.returncode == 1
    status = json.loads((out / "export.json").read_text())
    assert status["status"] == "failed" and status["format"] == "merged" and status["path"] is None
    assert status["error"]


def test_qwen2_to_gguf(exported, tmp_path):
    """Qwen2 (biases on q/k/v, no q/k permutation) round-trips through transformers' GGUF loader too."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(exported[0] / "merged"))
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # random, not zero, biases so that a lost bias shows
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model.save_pretrained(str(tmp_path / "qwen"))
    tokenizer.save_pretrained(str(tmp_path / "qwen"))
    path = ex.to_gguf(tmp_path / "qwen", tmp_path / "gguf" / "qwen.gguf")
    loaded = _load_gguf(path)
    assert loaded.config.model_type == "qwen2" and loaded.config.num_key_value_heads == 2
    expected = _logits(model, tokenizer)
    assert torch.allclose(_logits(loaded, tokenizer), expected, atol=1e-3)


def test_llama_grouped_query_attention_to_gguf(exported, tmp_path):
    """With fewer kv heads than heads, k_proj is permuted by the kv head count."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(exported[0] / "merged"))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, initializer_range=0.1,
                         bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(tmp_path / "gqa"))
    tokenizer.save_pretrained(str(tmp_path / "gqa"))
    path = ex.to_gguf(tmp_path / "gqa", tmp_path / "gguf" / "gqa.gguf")
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(str(path)).tensors}  # tied: token_embd reused
    loaded = _load_gguf(path)
    assert loaded.config.num_key_value_heads == 2 and loaded.config.tie_word_embeddings
    assert torch.allclose(_logits(loaded, tokenizer), _logits(model, tokenizer), atol=1e-3)


def test_sentencepiece_style_tokenizer_to_gguf(tmp_path):
    """A Llama-2 style vocabulary (BPE with byte fallback, "▁" for spaces) is written as tokenizer.ggml.model llama."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from trainer.tiny_model import _corpus

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(_corpus(), trainer=trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                                                    show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(tmp_path / "sp"))
    tokenizer.save_pretrained(str(tmp_path / "sp"))
    path = ex.to_gguf(tmp_path / "sp", tmp_path / "sp.gguf")
    assert gguf.GGUFReader(str(path)).fields["tokenizer.ggml.model"].contents() == "llama"
    from_gguf = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in ("What is the capital of France?", "Hello wörld ✓ 12"):  # the last two need the byte fallback
        assert from_gguf(text).input_ids == tokenizer(text).input_ids, text
    assert torch.allclose(_logits(_load_gguf(path), tokenizer), _logits(model, tokenizer), atol=1e-3)
