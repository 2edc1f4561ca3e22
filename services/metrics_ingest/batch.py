"""Batch bodies (``shared.ingest_batch``, where the contract and its encodings are described), validated into one
column set per metric name."""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import ValidationError

from shared.events import MetricPoint, PredictionRecord
from shared.ingest_batch import MAX_NAME, MAX_STEP, BatchIn, SeriesIn

MAX_ERRORS = 20


class BatchInvalid(ValueError):
    """A body that cannot be stored; ``errors`` name each field as ``{"field": ..., "problem": ...}``."""

    def __init__(self, errors: list[dict[str, str]]):
        self.errors = errors[:MAX_ERRORS]
        super().__init__("; ".join(f"{e['field']}: {e['problem']}" for e in self.errors))


@dataclass(slots=True)
class Series:
    """One metric's points in the batch, strictly increasing in step."""

    name: str
    steps: list[int]
    values: list[float]
    epochs: list[float | None] | None
    times: list[datetime] | None


@dataclass(slots=True)
class Batch:
    batch_id: str
    default_time: datetime
    attempt: int = 1
    series: list[Series] = field(default_factory=list)
    predictions: list[PredictionRecord] = field(default_factory=list)
    sent_points: int = 0

    @property
    def points(self) -> int:
        return sum(len(s.steps) for s in self.series)


    @property
    def first_step(self) -> int | None:
        """The smallest step of any point or prediction in the batch."""
        firsts = [s.steps[0] for s in self.series if s.steps] + [p.step for p in self.predictions]
        return min(firsts, default=None)


@dataclass(slots=True)
class _Parts:
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    epochs: list[float | None] = field(default_factory=list)
    times: list[datetime | None] = field(default_factory=list)
    has_epochs: bool = False
    has_times: bool = False


def _utc(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _finite(x: float | None) -> bool:
    return x is None or x - x == 0.0


def _name_problem(name: str) -> str | None:
    return None if 0 < len(name) <= MAX_NAME else f"metric names are 1..{MAX_NAME} characters"


def parse_batch(body: bytes, received_at: datetime | None = None) -> Batch:
    """Validate a JSON body; raise ``BatchInvalid`` naming every bad field."""
    try:
        raw = BatchIn.model_validate_json(body)
    except ValidationError as exc:
        raise BatchInvalid([{"field": ".".join(str(p) for p in e["loc"]) or "body", "problem": e["msg"]}
                            for e in exc.errors(include_url=False)]) from exc
    errors: list[dict[str, str]] = []
    parts: dict[str, _Parts] = {}
    _collect_series(raw.series, parts, errors)
    _collect_rows(raw.metrics, parts, errors)
    predictions = _check_predictions(raw.predictions, errors)
    if errors:
        raise BatchInvalid(errors)
    default_time = _utc(raw.recorded_at) if raw.recorded_at else (received_at or datetime.now(UTC))
    sent = sum(len(p.steps) for p in parts.values())
    series = [_series(name, parts[name], default_time) for name in sorted(parts)]
    return Batch(batch_id=raw.batch_id, default_time=default_time, attempt=raw.attempt, series=series,
                 predictions=predictions, sent_points=sent)


def _collect_series(items: list[SeriesIn], parts: dict[str, _Parts], errors: list[dict[str, str]]) -> None:
    for i, s in enumerate(items):
        n = len(s.steps)
        for key, column in (("values", s.values), ("epochs", s.epochs), ("recorded_at", s.recorded_at)):
            if column is not None and len(column) != n:
                errors.append({"field": f"series.{i}.{key}", "problem": f"has {len(column)} items for {n} steps"})
        if errors:
            continue
        p = parts.setdefault(s.name, _Parts())
        p.steps.extend(s.steps)
        p.values.extend(s.values)
        p.epochs.extend(s.epochs if s.epochs is not None else [None] * n)
        p.has_epochs |= s.epochs is not None
        if s.recorded_at is not None:
            p.times.extend(_utc(t) for t in s.recorded_at)
            p.has_times = True
        else:
            p.times.extend([None] * n)


def _collect_rows(items: list[MetricPoint], parts: dict[str, _Parts], errors: list[dict[str, str]]) -> None:
    for i, point in enumerate(items):
        if not 0 <= point.step <= MAX_STEP:
            errors.append({"field": f"metrics.{i}.step", "problem": f"steps are 0..{MAX_STEP}"})
        if not _finite(point.epoch):
            errors.append({"field": f"metrics.{i}.epoch", "problem": "must be a finite number"})
        when = _utc(point.recorded_at) if point.recorded_at else None
        for name, value in point.values.items():
            problem = _name_problem(name) or (None if _finite(value) else "must be a finite number")
            if problem:
                errors.append({"field": f"metrics.{i}.values.{name[:MAX_NAME]}", "problem": problem})
                continue
            p = parts.setdefault(name, _Parts())
            p.steps.append(point.step)
            p.values.append(value)
            p.epochs.append(point.epoch)
            p.times.append(when)
            p.has_epochs |= point.epoch is not None
            p.has_times |= when is not None


def _series(name: str, p: _Parts, default_time: datetime) -> Series:
    steps, values, epochs, times = p.steps, p.values, p.epochs, p.times
    if not all(map(operator.lt, steps, itertools.islice(steps, 1, None))):
        by_step = sorted(range(len(steps)), key=steps.__getitem__)  # stable: the first of equal steps leads
        order = [i for k, i in enumerate(by_step) if k == 0 or steps[i] != steps[by_step[k - 1]]]
        steps = [steps[i] for i in order]
        values = [values[i] for i in order]
        epochs = [epochs[i] for i in order]
        times = [times[i] for i in order]
    filled = [default_time if t is None else t for t in times] if p.has_times else None
    return Series(name=name, steps=steps, values=values, epochs=epochs if p.has_epochs else None, times=filled)


def _check_predictions(items: list[PredictionRecord], errors: list[dict[str, str]]) -> list[PredictionRecord]:
    unique: dict[tuple[int, int], PredictionRecord] = {}
    for i, p in enumerate(items):
        if not 0 <= p.step <= MAX_STEP:
            errors.append({"field": f"predictions.{i}.step", "problem": f"steps are 0..{MAX_STEP}"})
        if not 0 <= p.sample_index <= MAX_STEP:
            errors.append({"field": f"predictions.{i}.sample_index", "problem": f"sample indexes are 0..{MAX_STEP}"})
        if not _finite(p.epoch):
            errors.append({"field": f"predictions.{i}.epoch", "problem": "must be a finite number"})
        for name, score in p.scores.items():
            if not _finite(score):
                errors.append({"field": f"predictions.{i}.scores.{name[:MAX_NAME]}",
                               "problem": "must be a finite number"})
        unique.setdefault((p.step, p.sample_index), p)
    return [unique[k] for k in sorted(unique)]
