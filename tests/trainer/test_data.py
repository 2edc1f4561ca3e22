from __future__ import annotations

import json

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from shared.config import DataFormat
from shared.dataformats import DatasetError
from shared.jobspec import JobSpec
from trainer.data import (
    eval_size,
    load_rows,
    prediction_sample,
    prepare_sft_data,
    render_sft,
    split_rows,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _spec(tmp_path, rows: list[dict], fmt: str, **data) -> JobSpec:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return JobSpec.model_validate({
        "job_id": "j",
        "config": {"model": {"base_model": "m"}, "data": {"train_path": str(path), **data}},
        "dataset_path": str(path),
        "dataset_format": fmt,
        "output_dir": str(tmp_path / "out"),
    })


def test_instruction_rendering_with_and_without_input():
    with_input = render_sft({"instruction": "Name the capital.", "input": "France", "output": "Paris"},
                            DataFormat.INSTRUCTION)
    assert with_input == {
        "prompt": "### Instruction:\nName the capital.\n\n### Input:\nFrance\n\n### Response:\n",
        "completion": "Paris",
    }
    for row in ({"instruction": "Say hi.", "output": "hi"}, {"instruction": "Say hi.", "input": "", "output": "hi"}):
        assert render_sft(row, DataFormat.INSTRUCTION) == {
            "prompt": "### Instruction:\nSay hi.\n\n### Response:\n",
            "completion": "hi",
        }


def test_chat_rendering_uses_the_chat_template(tokenizer):
    row = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of Peru?"},
        {"role": "assistant", "content": "Lima"},
    ]}
    rendered = render_sft(row, DataFormat.CHAT, tokenizer)
    assert rendered == {
        "prompt": "<|system|>\nBe brief.\n<|user|>\nCapital of Peru?\n<|assistant|>\n",
        "completion": "Lima",
    }


def test_chat_rendering_without_a_template_uses_the_plain_one(tokenizer):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    assert render_sft(row, DataFormat.CHAT, None) == {
        "prompt": "### User:\nHi\n\n### Assistant:\n",
        "completion": "Hello",
    }


def test_chat_template_bos_is_not_doubled(tokenizer):
    templated = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    templated.chat_template = "{{ bos_token }}" + templated.chat_template
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    prompt = render_sft(row, DataFormat.CHAT, templated)["prompt"]
    assert prompt == "<|user|>\nHi\n<|assistant|>\n"
    assert templated(prompt).input_ids.count(templated.bos_token_id) == 1


def test_text_rendering_and_prediction_split():
    row = {"text": "The capital of Peru is Lima."}
    assert render_sft(row, DataFormat.TEXT) == {"prompt": "", "completion": "The capital of Peru is Lima."}
    sample = prediction_sample(row, DataFormat.TEXT)
    assert (sample.prompt, sample.expected) == ("The capital of", "Peru is Lima.")
    one_word = prediction_sample({"text": "Lima"}, DataFormat.TEXT)
    assert (one_word.prompt, one_word.expected) == ("", "Lima")


def test_preference_cannot_be_rendered_for_sft(tmp_path):
    spec = _spec(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 4, "preference")
    with pytest.raises(ValueError, match="preference"):
        prepare_sft_data(spec)


@pytest.mark.parametrize(("rows", "split", "expected"), [
    (64, 0.1, 6), (64, 0.2, 13), (10, 0.01, 1), (2, 0.5, 1), (2, 0.89, 1), (1, 0.5, 0), (50, 0.0, 0),
])
def test_eval_size(rows, split, expected):
    assert eval_size(rows, split) == expected


def test_split_caps_shuffles_deterministically_and_separates():
    rows = [{"text": str(i)} for i in range(100)]
    train, held_out = split_rows(rows, eval_split=0.25, max_samples=40, seed=7)
    assert len(train) == 30 and len(held_out) == 10
    texts = [r["text"] for r in train + held_out]
    assert sorted(texts, key=int) == [str(i) for i in range(40)]
    assert texts != [str(i) for i in range(40)]
    assert split_rows(rows, eval_split=0.25, max_samples=40, seed=7) == (train, held_out)
    assert split_rows(rows, eval_split=0.25, max_samples=40, seed=8) != (train, held_out)


def test_invalid_rows_name_their_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n\nnot json\n{"instruction": "a"}\n')
    with pytest.raises(DatasetError) as info:
        load_rows(str(path), DataFormat.INSTRUCTION)
    assert [n for n, _ in info.value.errors] == [3, 4]


@pytest.mark.parametrize("fmt", ["instruction", "chat", "text"])
def test_prepare_sft_data_returns_datasets(tmp_path, tokenizer, fmt):
    from trainer.tiny_model import sample_rows

    spec = _spec(tmp_path, sample_rows(20, fmt), fmt, eval_split=0.1, shuffle_seed=3)
    data = prepare_sft_data(spec, tokenizer)
    assert isinstance(data.train, Dataset) and isinstance(data.eval, Dataset)
    assert data.train.column_names == ["prompt", "completion"]
    assert (data.train_count, data.eval_count) == (18, 2)
    assert len(data.samples) == 2
    if fmt == "text":
        assert data.samples[0].prompt and data.samples[0].expected
    else:
        assert data.samples[0].prompt == data.eval[0]["prompt"]
        assert data.samples[0].expected == data.eval[0]["completion"]


def test_prepare_sft_data_without_eval_split(tmp_path, tokenizer):
    from trainer.tiny_model import sample_rows

    spec = _spec(tmp_path, sample_rows(8, "instruction"), "instruction", eval_split=0.0, max_samples=5)
    data = prepare_sft_data(spec, tokenizer)
    assert (data.train_count, data.eval, data.samples) == (5, None, [])
