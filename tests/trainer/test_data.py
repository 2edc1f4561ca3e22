from __future__ import annotations

import json

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from shared.config import DataFormat, Method
from shared.dataformats import DatasetError
from shared.jobspec import JobSpec
from trainer.data import (
    eval_size,
    load_rows,
    prediction_sample,
    prepare_data,
    render_row,
    render_sft,
    split_rows,
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _spec(tmp_path, rows: list[dict], fmt: str, method: str = "sft", **data) -> JobSpec:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    training = {"method": method, "rlhf": {"reward_model": "rm"} if method == "rlhf" else {}}
    return JobSpec.model_validate({
        "job_id": "j",
        "config": {"model": {"base_model": "m"}, "data": {"train_path": str(path), **data}, "training": training},
        "dataset_path": str(path),
        "dataset_format": fmt,
        "output_dir": str(tmp_path / "out"),
    })


def test_instruction_rendering_without_a_chat_template_uses_the_plain_one():
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


def test_instruction_rendering_uses_the_chat_template(tokenizer):
    with_input = render_sft({"instruction": "Name the capital.", "input": "France", "output": "Paris"},
                            DataFormat.INSTRUCTION, tokenizer)
    assert with_input == {"prompt": "<|user|>\nName the capital.\n\nFrance\n<|assistant|>\n", "completion": "Paris"}
    without = render_sft({"instruction": "Say hi.", "input": " ", "output": "hi"}, DataFormat.INSTRUCTION, tokenizer)
    assert without["prompt"] == "<|user|>\nSay hi.\n<|assistant|>\n"


def test_preference_rows_for_dpo_and_rlhf(tokenizer):
    row = {"prompt": "Capital of Peru?", "chosen": "Lima", "rejected": "Quito"}
    assert render_row(row, DataFormat.PREFERENCE, Method.DPO, tokenizer) == {
        "prompt": "<|user|>\nCapital of Peru?\n<|assistant|>\n", "chosen": "Lima", "rejected": "Quito"
    }
    assert render_row(row, DataFormat.PREFERENCE, Method.ORPO, None)["prompt"] == (
        "### User:\nCapital of Peru?\n\n### Assistant:\n"
    )
    assert render_row(row, DataFormat.PREFERENCE, Method.RLHF, tokenizer) == {
        "prompt": "<|user|>\nCapital of Peru?\n<|assistant|>\n", "reference": "Lima"
    }
    sample = prediction_sample(row, DataFormat.PREFERENCE, tokenizer)
    assert (sample.prompt, sample.expected) == ("<|user|>\nCapital of Peru?\n<|assistant|>\n", "Lima")


@pytest.mark.parametrize(("method", "fmt", "columns"), [
    ("dpo", "preference", ["prompt", "chosen", "rejected"]),
    ("orpo", "preference", ["prompt", "chosen", "rejected"]),
    ("rlhf", "chat", ["prompt", "reference"]),
    ("rlhf", "instruction", ["prompt", "reference"]),
])
def test_prepare_data_columns_by_method(tmp_path, tokenizer, method, fmt, columns):
    from trainer.tiny_model import sample_rows

    data = prepare_data(_spec(tmp_path, sample_rows(10, fmt), fmt, method, eval_split=0.2), tokenizer)
    assert data.train.column_names == columns and data.eval.column_names == columns
    assert (data.train_count, data.eval_count, len(data.samples)) == (8, 2, 2)
    assert all(sample.prompt.endswith("<|assistant|>\n") and sample.expected for sample in data.samples)


def test_rlhf_drops_prompts_that_leave_no_room_for_a_completion(tmp_path, tokenizer):
    def spec_of(rows: list[dict]) -> JobSpec:
        spec = _spec(tmp_path, rows, "instruction", "rlhf", eval_split=0.0)
        model = spec.config.model.model_copy(update={"max_seq_length": 128})
        return spec.model_copy(update={"config": spec.config.model_copy(update={"model": model})})

    rows = [{"instruction": "Name it.", "output": "x"}] * 6 + [{"instruction": "word " * 200, "output": "x"}] * 2
    data = prepare_data(spec_of(rows), tokenizer)
    assert (data.train_count, data.dropped) == (6, 2)
    with pytest.raises(DatasetError, match="every prompt is longer"):
        prepare_data(spec_of(rows[6:]), tokenizer)


def test_rows_that_cannot_be_rendered_name_their_lines(tmp_path, tokenizer):
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    empty_prompt = {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "Hello"}]}
    no_prompt = {"messages": [{"role": "assistant", "content": "Hello"}]}
    empty_reply = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, empty_prompt, good)) + "\n\n"
                    + "\n".join(json.dumps(r) for r in (no_prompt, empty_reply)) + "\n")
    spec = _spec(tmp_path, [], "chat")
    spec = spec.model_copy(update={"dataset_path": str(path)})
    with pytest.raises(DatasetError) as info:
        prepare_data(spec, tokenizer)
    assert [n for n, _ in info.value.errors] == [2, 5, 6]
    assert "prompt would be empty" in info.value.errors[0][1]
    assert "last assistant message is empty" in info.value.errors[2][1]


def test_a_chat_template_that_fails_names_the_row(tmp_path, tokenizer):
    strict = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    strict.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ m['content'] }}{% endfor %}"
    )
    from trainer.tiny_model import sample_rows

    with pytest.raises(DatasetError) as info:
        prepare_data(_spec(tmp_path, sample_rows(6, "chat"), "chat"), strict)
    assert info.value.errors[0][0] == 1
    assert "System role not supported" in info.value.errors[0][1]


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
        prepare_data(spec)


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
    data = prepare_data(spec, tokenizer)
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
    data = prepare_data(spec, tokenizer)
    assert (data.train_count, data.eval, data.samples) == (5, None, [])
