"""Load a JSONL data set, render its rows for the training method and split off a held-out set.

Order of operations: read and validate every row (``shared.dataformats.check_row``), keep the first
``data.max_samples`` rows of the file, render each row (a row that cannot be rendered fails the whole set, naming
its line), shuffle with ``data.shuffle_seed``, then take the first ``round(rows * data.eval_split)`` shuffled rows
as the held-out set (at least 1 when ``eval_split > 0`` and there are at least 2 rows; never all of them).

Prompts. Where the tokenizer has a chat template, a prompt is rendered with it and ``add_generation_prompt=True``
(a leading bos token is dropped when the tokenizer adds one itself); where it has none, the plain templates below
are used:

* chat: every message but the last (assistant) one; plain: each message as ``### {Role}:\\n{content}\\n\\n``, then
  ``### Assistant:\\n``. At least one of those messages must have content.
* instruction: one user message, ``instruction`` followed by ``\\n\\n{input}`` when the input is not empty; plain:
  ``INSTRUCTION_TEMPLATE`` (``INSTRUCTION_TEMPLATE_NO_INPUT`` without input).
* preference: one user message, ``prompt``; plain: ``### User:\\n{prompt}\\n\\n### Assistant:\\n``.
* text: no prompt.

Columns by method:

* sft: ``prompt`` and ``completion`` (the last assistant message, ``output``, or the whole ``text``; TRL appends the
  eos token).
* dpo, orpo: ``prompt``, ``chosen`` and ``rejected``.
* rlhf: ``prompt`` and ``reference`` (the answer the data gives: last assistant message, ``output`` or ``chosen``).
  Rows whose prompt leaves no room for ``training.rlhf.max_completion_length`` tokens within
  ``model.max_seq_length`` are dropped (``PreparedData.dropped``).

Prediction samples come from the held-out rows: the prompt and the expected answer (for preference data, the
chosen one). For text, the first half of the words is the prompt and the rest is the expected text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.config import DataFormat, Method, method_format_problem
from shared.dataformats import MAX_REPORTED_ERRORS, DatasetError, read_rows
from shared.jobspec import JobSpec

if TYPE_CHECKING:
    from datasets import Dataset

INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
INSTRUCTION_TEMPLATE_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"
PLAIN_CHAT_TURN = "### {role}:\n{content}\n\n"
PLAIN_CHAT_GENERATION_PROMPT = "### Assistant:\n"

COLUMNS: dict[Method, tuple[str, ...]] = {
    Method.SFT: ("prompt", "completion"),
    Method.DPO: ("prompt", "chosen", "rejected"),
    Method.ORPO: ("prompt", "chosen", "rejected"),
    Method.RLHF: ("prompt", "reference"),
}


class RowError(ValueError):
    """One row cannot be rendered; the message says why and what to change."""


@dataclass(frozen=True)
class PredictionSample:
    prompt: str
    expected: str


@dataclass
class PreparedData:
    """``train``/``eval`` have the columns ``COLUMNS[method]``; ``samples`` come from the eval rows."""

    train: Dataset
    eval: Dataset | None
    samples: list[PredictionSample]
    format: DataFormat
    method: Method = Method.SFT
    dropped: int = 0

    @property
    def train_count(self) -> int:
        return len(self.train)

    @property
    def eval_count(self) -> int:
        return 0 if self.eval is None else len(self.eval)


def load_rows(path: str, fmt: DataFormat) -> list[dict]:
    """Read every non-blank JSONL line; raise DatasetError (with line numbers) on invalid rows."""
    return read_rows(path, fmt)


def line_numbers(path: str) -> list[int]:
    """The 1-based line number of each row of a valid file (blank lines hold no row)."""
    with open(path, encoding="utf-8") as f:
        return [n for n, line in enumerate(f, start=1) if line.strip()]


def eval_size(rows: int, eval_split: float) -> int:
    if eval_split <= 0 or rows < 2:
        return 0
    return min(max(1, round(rows * eval_split)), rows - 1)


def split_rows(
    rows: list, *, eval_split: float, max_samples: int | None = None, seed: int = 42
) -> tuple[list, list]:
    """Cap, shuffle and split; return (train_rows, eval_rows)."""
    rows = list(rows[:max_samples] if max_samples else rows)
    random.Random(seed).shuffle(rows)
    n_eval = eval_size(len(rows), eval_split)
    return rows[n_eval:], rows[:n_eval]


def _adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def render_chat_prompt(messages: list[dict], tokenizer) -> str:
    """Render the messages as the prompt that asks for the next assistant turn."""
    if has_chat_template(tokenizer):
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:
            raise RowError(f"the tokenizer's chat template cannot render this row ({type(exc).__name__}: {exc}); "
                           "change the roles or content it refuses") from exc
        bos = tokenizer.bos_token
        if bos and text.startswith(bos) and _adds_bos(tokenizer):
            text = text[len(bos):]  # the tokenizer adds it again when the prompt is encoded
        return text
    turns = "".join(PLAIN_CHAT_TURN.format(role=m["role"].capitalize(), content=m["content"]) for m in messages)
    return turns + PLAIN_CHAT_GENERATION_PROMPT


def render_instruction_prompt(row: dict, tokenizer=None) -> str:
    """The prompt of an instruction row: the chat template's where the tokenizer has one, else the plain one."""
    has_input = bool(row.get("input", "").strip())
    if has_chat_template(tokenizer):
        content = f"{row['instruction']}\n\n{row['input']}" if has_input else row["instruction"]
        return render_chat_prompt([{"role": "user", "content": content}], tokenizer)
    if has_input:
        return INSTRUCTION_TEMPLATE.format(instruction=row["instruction"], input=row["input"])
    return INSTRUCTION_TEMPLATE_NO_INPUT.format(instruction=row["instruction"])


def render_prompt(row: dict, fmt: DataFormat, tokenizer=None) -> str:
    """The prompt of a chat, instruction or preference row ("" for text)."""
    if fmt is DataFormat.INSTRUCTION:
        return render_instruction_prompt(row, tokenizer)
    if fmt is DataFormat.PREFERENCE:
        return render_chat_prompt([{"role": "user", "content": row["prompt"]}], tokenizer)
    if fmt is DataFormat.CHAT:
        context = row["messages"][:-1]
        if not any(m["content"].strip() for m in context):
            raise RowError("every message before the last assistant reply is empty, so the prompt would be empty; "
                           "give the row a user message with content")
        return render_chat_prompt(context, tokenizer)
    return ""


def expected_answer(row: dict, fmt: DataFormat) -> str:
    """The answer the data gives for the row's prompt."""
    if fmt is DataFormat.INSTRUCTION:
        return row["output"]
    if fmt is DataFormat.PREFERENCE:
        return row["chosen"]
    if fmt is DataFormat.CHAT:
        answer = row["messages"][-1]["content"]
        if not answer.strip():
            raise RowError("the last assistant message is empty: there is nothing to learn from this row")
        return answer
    return row["text"]


def render_sft(row: dict, fmt: DataFormat, tokenizer=None) -> dict[str, str]:
    """One row as ``{"prompt": ..., "completion": ...}`` for TRL's prompt-completion SFT."""
    if fmt is DataFormat.PREFERENCE:
        raise ValueError(f"format {fmt.value!r} cannot be rendered for SFT: use text, chat or instruction data")
    return {"prompt": render_prompt(row, fmt, tokenizer), "completion": expected_answer(row, fmt)}


def render_row(row: dict, fmt: DataFormat, method: Method, tokenizer=None) -> dict[str, str]:
    """One row with the columns ``COLUMNS[method]``."""
    if method is Method.SFT:
        return render_sft(row, fmt, tokenizer)
    prompt = render_prompt(row, fmt, tokenizer)
    if method is Method.RLHF:
        return {"prompt": prompt, "reference": expected_answer(row, fmt)}
    return {"prompt": prompt, "chosen": row["chosen"], "rejected": row["rejected"]}


def prediction_sample(row: dict, fmt: DataFormat, tokenizer=None) -> PredictionSample:
    if fmt is DataFormat.TEXT:
        words = row["text"].split(" ")
        half = max(1, len(words) // 2) if len(words) > 1 else 0
        return PredictionSample(prompt=" ".join(words[:half]), expected=" ".join(words[half:]))
    return PredictionSample(prompt=render_prompt(row, fmt, tokenizer), expected=expected_answer(row, fmt))


def check_method_format(method: Method, fmt: DataFormat) -> None:
    problem = method_format_problem(method, fmt)
    if problem:
        raise ValueError(problem)


def prepare_data(spec: JobSpec, tokenizer=None) -> PreparedData:
    """Load ``spec.dataset_path`` and return the rendered train/eval sets and the prediction samples.

    Raises DatasetError naming the lines of rows that are invalid or cannot be rendered.
    """
    from datasets import Dataset

    fmt = DataFormat(spec.dataset_format)
    method = spec.config.training.method
    check_method_format(method, fmt)
    data = spec.config.data
    rows = load_rows(spec.dataset_path, fmt)[: data.max_samples]
    rendered: list[tuple[dict[str, str], PredictionSample]] = []
    errors: list[tuple[int, str]] = []
    for line, row in zip(line_numbers(spec.dataset_path), rows, strict=False):
        try:
            rendered.append((render_row(row, fmt, method, tokenizer), prediction_sample(row, fmt, tokenizer)))
        except RowError as exc:
            errors.append((line, f"{exc} (format {fmt.value})"))
            if len(errors) >= MAX_REPORTED_ERRORS:
                break
    if errors:
        raise DatasetError(errors)
    kept = _fitting_prompts(rendered, spec, tokenizer) if method is Method.RLHF and tokenizer is not None else rendered
    train_rows, eval_rows = split_rows(kept, eval_split=data.eval_split, seed=data.shuffle_seed)
    if not train_rows:
        raise DatasetError([(0, "no training rows left after the eval split")])

    def to_dataset(items: list[tuple[dict[str, str], PredictionSample]]) -> Dataset:
        return Dataset.from_dict({c: [record[c] for record, _ in items] for c in COLUMNS[method]})

    return PreparedData(
        train=to_dataset(train_rows),
        eval=to_dataset(eval_rows) if eval_rows else None,
        samples=[sample for _, sample in eval_rows],
        format=fmt,
        method=method,
        dropped=len(rendered) - len(kept),
    )


def _fitting_prompts(rendered: list, spec: JobSpec, tokenizer) -> list:
    """The RLHF rows whose prompt leaves room for a whole completion within ``model.max_seq_length``."""
    budget = spec.config.model.max_seq_length - spec.config.training.rlhf.max_completion_length
    lengths = [len(ids) for ids in tokenizer([record["prompt"] for record, _ in rendered]).input_ids]
    kept = [item for item, length in zip(rendered, lengths, strict=True) if length <= budget]
    if not kept:
        raise DatasetError([(0, f"every prompt is longer than model.max_seq_length - training.rlhf."
                                f"max_completion_length = {budget} tokens: raise model.max_seq_length or shorten "
                                "the prompts")])
    return kept

