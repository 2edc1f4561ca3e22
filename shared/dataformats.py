"""JSONL data set formats: detection, per-line validation and statistics.

Used by the gateway on upload and by the trainer when it reads ``data.train_path``. The statistics come from the
same single pass over the file as the check: character lengths of the text each row trains on, and a histogram of
their approximate token lengths (``token_histogram``).
"""

from __future__ import annotations

import bisect
import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

from shared.config import DataFormat

_ROLES = {"system", "user", "assistant", "tool"}
MAX_REPORTED_ERRORS = 20
#: Characters per token of the approximation the statistics (and the estimate, ``shared.estimate``) use.
CHARS_PER_TOKEN = 4.0
#: Edges of the token-length histogram's buckets (a power of two apart from 32: the lengths models are cut at).
TOKEN_EDGES = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class DatasetError(ValueError):
    """The file is not a valid data set; ``errors`` lists (line number, problem)."""

    def __init__(self, errors: list[tuple[int, str]]):
        self.errors = errors
        first = "; ".join(f"line {n}: {msg}" for n, msg in errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        super().__init__(first + more)


def detect_format(row: dict) -> DataFormat | None:
    if "messages" in row:
        return DataFormat.CHAT
    if {"prompt", "chosen", "rejected"} <= row.keys():
        return DataFormat.PREFERENCE
    if "instruction" in row and "output" in row:
        return DataFormat.INSTRUCTION
    if "text" in row:
        return DataFormat.TEXT
    return None


def _nonempty_str(row: dict, key: str) -> str | None:
    value = row.get(key)
    if not isinstance(value, str):
        return f'"{key}" must be a string, got {type(value).__name__}'
    if not value.strip():
        return f'"{key}" is empty'
    return None


def check_row(row: dict, fmt: DataFormat) -> str | None:
    """Return the problem with one row, or None when it is valid for ``fmt``."""
    if fmt is DataFormat.TEXT:
        return _nonempty_str(row, "text")
    if fmt is DataFormat.INSTRUCTION:
        if "input" in row and not isinstance(row["input"], str):
            return '"input" must be a string when present'
        return _nonempty_str(row, "instruction") or _nonempty_str(row, "output")
    if fmt is DataFormat.PREFERENCE:
        return _nonempty_str(row, "prompt") or _nonempty_str(row, "chosen") or _nonempty_str(row, "rejected")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        return '"messages" must be a non-empty list of {"role", "content"} objects'
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            return f'messages[{i}].role must be one of {sorted(_ROLES)}'
        if not isinstance(m.get("content"), str):
            return f"messages[{i}].content must be a string"
    if messages[-1]["role"] != "assistant":
        return 'the last message must have role "assistant" (the reply to learn)'
    return None


def row_length(row: dict, fmt: DataFormat) -> int:
    if fmt is DataFormat.TEXT:
        return len(row["text"])
    if fmt is DataFormat.INSTRUCTION:
        return len(row["instruction"]) + len(row.get("input", "")) + len(row["output"])
    if fmt is DataFormat.PREFERENCE:
        return len(row["prompt"]) + max(len(row["chosen"]), len(row["rejected"]))
    return sum(len(m["content"]) for m in row["messages"])


def approx_tokens(chars: int) -> int:
    """A row's tokens, approximated as ceil(characters / ``CHARS_PER_TOKEN``): at upload no tokenizer is at hand (a
    data set is not tied to one model, and none is loaded on the gateway). It is the rule of thumb for BPE tokenizers
    on English prose; code, numbers and most other languages take more tokens per character, and a chat template adds
    a few tokens per message."""
    return math.ceil(chars / CHARS_PER_TOKEN)


def token_histogram(lengths: list[int]) -> dict:
    """The rows' approximate token lengths (``approx_tokens`` of each row's characters, as ``row_length`` counts them)
    as a histogram: ``counts[i]`` rows have ``edges[i] <= tokens < edges[i + 1]``. The edges are ``TOKEN_EDGES`` up
    to the first past the longest row (or the longest row + 1, past the last edge), so no bucket is empty at the
    end. With ``min``, ``max``, ``mean`` and ``p95`` of the token lengths, and how they were counted."""
    tokens = sorted(approx_tokens(n) for n in lengths)
    longest = tokens[-1]
    edges = [e for e in TOKEN_EDGES if e <= longest]
    edges.append(next((e for e in TOKEN_EDGES if e > longest), longest + 1))
    counts = [0] * (len(edges) - 1)
    for n in tokens:
        counts[bisect.bisect_right(edges, n) - 1] += 1
    return {"approximation": f"ceil(characters / {CHARS_PER_TOKEN:g})", "edges": edges, "counts": counts,
            "min": tokens[0], "max": longest, "mean": round(statistics.fmean(tokens), 1),
            "p95": tokens[math.ceil(0.95 * len(tokens)) - 1]}


@dataclass
class DatasetSummary:
    format: DataFormat
    rows: int
    stats: dict = field(default_factory=dict)


def _parse(lines: Iterable[bytes | str], expected: DataFormat | None) -> tuple[DataFormat | None, list[dict]]:
    """Check every line; return the format and the valid rows, or raise DatasetError naming lines and problems."""
    errors: list[tuple[int, str]] = []
    fmt = expected
    rows: list[dict] = []
    for number, raw in enumerate(lines, start=1):
        text = raw.decode("utf-8", errors="strict") if isinstance(raw, bytes) else raw
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append((number, f"not valid JSON ({exc.msg} at column {exc.colno})"))
        else:
            if not isinstance(row, dict):
                errors.append((number, "each line must be a JSON object"))
            else:
                if fmt is None:
                    fmt = detect_format(row)
                if fmt is None:
                    errors.append((number, 'unknown format: expected "text", "messages", '
                                           '"instruction"/"output" or "prompt"/"chosen"/"rejected"'))
                elif problem := check_row(row, fmt):
                    errors.append((number, f"{problem} (format {fmt.value})"))
                else:
                    rows.append(row)
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
    if errors:
        raise DatasetError(errors)
    if fmt is None or not rows:
        raise DatasetError([(0, "the file holds no rows")])
    return fmt, rows


def validate_lines(lines: Iterable[bytes | str], expected: DataFormat | None = None) -> DatasetSummary:
    """Check every line and summarise the data set; raise DatasetError naming the lines and problems."""
    fmt, rows = _parse(lines, expected)
    lengths = [row_length(row, fmt) for row in rows]
    return DatasetSummary(
        format=fmt,
        rows=len(rows),
        stats={
            "chars_total": sum(lengths),
            "chars_mean": round(statistics.fmean(lengths), 1),
            "chars_min": min(lengths),
            "chars_max": max(lengths),
            "token_lengths": token_histogram(lengths),
        },
    )


def read_rows(path: str, fmt: DataFormat) -> list[dict]:
    """Every row of a JSONL file of format ``fmt``; raise DatasetError naming invalid lines."""
    with open(path, encoding="utf-8") as f:
        return _parse(f, fmt)[1]


def first_rows(path: str, limit: int) -> list[dict]:
    """The first ``limit`` rows of a JSONL file that was validated (blank lines skipped), as they are written."""
    rows: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for text in f:
            if len(rows) >= limit:
                break
            if text.strip():
                rows.append(json.loads(text))
    return rows


def validate_file(path: str, expected: DataFormat | None = None) -> DatasetSummary:
    with open(path, "rb") as f:
        return validate_lines(f, expected)
