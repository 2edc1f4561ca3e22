"""Load a JSONL data set, split off a held-out set and render rows as SFT prompt/completion pairs.

Order of operations: read and validate every row (``shared.dataformats.check_row``), keep the first
``data.max_samples`` rows of the file, shuffle with ``data.shuffle_seed``, then take the first
``round(rows * data.eval_split)`` shuffled rows as the held-out set (at least 1 when ``eval_split > 0``
and there are at least 2 rows; never all of them).

Rendering for SFT (prompt and completion are plain strings; TRL appends the eos token to the completion):

* instruction: prompt is ``INSTRUCTION_TEMPLATE`` (``INSTRUCTION_TEMPLATE_NO_INPUT`` when ``input`` is empty),
  completion is ``output``.
* chat: prompt is every message but the last (assistant) one rendered with the tokenizer's chat template and
  ``add_generation_prompt=True``; without a chat template each message becomes ``### {Role}:\\n{content}\\n\\n``
  and the prompt ends with ``### Assistant:\\n``. The completion is the last assistant message's content.
* text: prompt is "" and the completion is the whole text. For predictions the first half of the words is the
  prompt and the rest is the expected text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.config import DataFormat
from shared.dataformats import DatasetError, read_rows
from shared.jobspec import JobSpec

if TYPE_CHECKING:
    from datasets import Dataset

INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
INSTRUCTION_TEMPLATE_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
PLAIN_CHAT_TURN = "### {role}:\n{content}\n\n"
PLAIN_CHAT_GENERATION_PROMPT = "### Assistant:\n"


@dataclass(frozen=True)
class PredictionSample:
    prompt: str
    expected: str


@dataclass
class PreparedData:
    """``train``/``eval`` have the columns ``prompt`` and ``completion``; ``samples`` come from the eval rows."""

    train: Dataset
    eval: Dataset | None
    samples: list[PredictionSample]
    format: DataFormat

    @property
    def train_count(self) -> int:
        return len(self.train)

    @property
    def eval_count(self) -> int:
        return 0 if self.eval is None else len(self.eval)


def load_rows(path: str, fmt: DataFormat) -> list[dict]:
    """Read every non-blank JSONL line; raise DatasetError (with line numbers) on invalid rows."""
    return read_rows(path, fmt)


def eval_size(rows: int, eval_split: float) -> int:
    if eval_split <= 0 or rows < 2:
        return 0
    return min(max(1, round(rows * eval_split)), rows - 1)


def split_rows(
    rows: list[dict], *, eval_split: float, max_samples: int | None = None, seed: int = 42
) -> tuple[list[dict], list[dict]]:
    """Cap, shuffle and split; return (train_rows, eval_rows)."""
    rows = list(rows[:max_samples] if max_samples else rows)
    random.Random(seed).shuffle(rows)
    n_eval = eval_size(len(rows), eval_split)
    return rows[n_eval:], rows[:n_eval]


def _adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def render_chat_prompt(messages: list[dict], tokenizer) -> str:
    """Render the messages as the prompt that asks for the next assistant turn."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        bos = tokenizer.bos_token
        if bos and text.startswith(bos) and _adds_bos(tokenizer):
            text = text[len(bos):]  # the tokenizer adds it again when the prompt is encoded
        return text
    turns = "".join(PLAIN_CHAT_TURN.format(role=m["role"].capitalize(), content=m["content"]) for m in messages)
    return turns + PLAIN_CHAT_GENERATION_PROMPT


def render_instruction_prompt(row: dict) -> str:
    if row.get("input", "").strip():
        return INSTRUCTION_TEMPLATE.format(instruction=row["instruction"], input=row["input"])
    return INSTRUCTION_TEMPLATE_NO_INPUT.format(instruction=row["instruction"])


def render_sft(row: dict, fmt: DataFormat, tokenizer=None) -> dict[str, str]:
    """One row as ``{"prompt": ..., "completion": ...}`` for TRL's prompt-completion SFT."""
    if fmt is DataFormat.INSTRUCTION:
        return {"prompt": render_instruction_prompt(row), "completion": row["output"]}
    if fmt is DataFormat.CHAT:
        messages = row["messages"]
        return {"prompt": render_chat_prompt(messages[:-1], tokenizer), "completion": messages[-1]["content"]}
    if fmt is DataFormat.TEXT:
        return {"prompt": "", "completion": row["text"]}
    raise ValueError(f"format {fmt.value!r} cannot be rendered for SFT: use text, chat or instruction data")


def prediction_sample(row: dict, fmt: DataFormat, tokenizer=None) -> PredictionSample:
    if fmt is DataFormat.TEXT:
        words = row["text"].split(" ")
        half = max(1, len(words) // 2) if len(words) > 1 else 0
        return PredictionSample(prompt=" ".join(words[:half]), expected=" ".join(words[half:]))
    rendered = render_sft(row, fmt, tokenizer)
    return PredictionSample(prompt=rendered["prompt"], expected=rendered["completion"])


def prepare_sft_data(spec: JobSpec, tokenizer=None) -> PreparedData:
    """Load ``spec.dataset_path`` and return the rendered train/eval sets and the prediction samples."""
    from datasets import Dataset

    fmt = DataFormat(spec.dataset_format)
    if fmt is DataFormat.PREFERENCE:
        raise ValueError(
            f"training.method={spec.config.training.method.value!r} cannot train on preference data "
            "(prompt/chosen/rejected): use text, chat or instruction data, or a preference method"
        )
    data = spec.config.data
    train_rows, eval_rows = split_rows(
        load_rows(spec.dataset_path, fmt),
        eval_split=data.eval_split,
        max_samples=data.max_samples,
        seed=data.shuffle_seed,
    )
    if not train_rows:
        raise DatasetError([(0, "no training rows left after the eval split")])

    def to_dataset(rows: list[dict]):
        rendered = [render_sft(r, fmt, tokenizer) for r in rows]
        return Dataset.from_dict(
            {"prompt": [r["prompt"] for r in rendered], "completion": [r["completion"] for r in rendered]}
        )

    return PreparedData(
        train=to_dataset(train_rows),
        eval=to_dataset(eval_rows) if eval_rows else None,
        samples=[prediction_sample(r, fmt, tokenizer) for r in eval_rows],
        format=fmt,
    )
