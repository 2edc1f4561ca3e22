from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from shared.config import DataFormat
from shared.dataformats import validate_file
from trainer.tiny_model import write_sample_dataset


def test_tiny_model_round_trips_through_from_pretrained(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    assert model.config.model_type == "llama"
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token) == (
        "<s>", "</s>", "<pad>", "<unk>"
    )
    text = "What is the capital of France? Paris"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer("Paris</s>").input_ids[-1] == tokenizer.eos_token_id

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)
    assert model.config.vocab_size == len(tokenizer)


def test_tiny_tokenizer_renders_chat(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False) == "<|user|>\nHi\n<|assistant|>\nHello</s>\n"
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|user|>\nHi\n<|assistant|>\n"


@pytest.mark.parametrize("fmt", ["text", "instruction", "chat", "preference"])
def test_sample_datasets_are_valid(tmp_path, fmt):
    path = write_sample_dataset(str(tmp_path / f"{fmt}.jsonl"), rows=10, fmt=fmt)
    summary = validate_file(path)
    assert summary.format is DataFormat(fmt)
    assert summary.rows == 10
    again = write_sample_dataset(str(tmp_path / "again.jsonl"), rows=10, fmt=fmt)
    assert Path(path).read_text(encoding="utf-8") == Path(again).read_text(encoding="utf-8")
    assert all(json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines())


def test_sample_dataset_rejects_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        write_sample_dataset(str(tmp_path / "x.jsonl"), fmt="audio")
