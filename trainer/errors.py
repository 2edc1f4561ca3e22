"""Errors the trainer reports in ``result.json`` and how each becomes a message a person can act on."""

from __future__ import annotations

from shared.dataformats import DatasetError

OOM_ADVICE = (
    "out of memory: lower training.batch_size (raise training.gradient_accumulation_steps to keep the effective "
    "batch), lower model.max_seq_length, set training.gradient_checkpointing=true, set training.quantization.bits=4 "
    "or lower training.lora.r"
)


class ConfigRefused(ValueError):
    """The configuration cannot run here; raised before any model weights load.

    ``field`` is the dotted config field (``training.fp16``); ``message`` names it and says the fix.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def describe_failure(exc: BaseException) -> tuple[str, str, str | None]:
    """``(error_type, message, error_field)`` for ``result.json``.

    Out-of-memory errors of every kind get error_type "OutOfMemoryError" and a message that lists the knobs to turn.
    """
    if isinstance(exc, ConfigRefused):
        return "ConfigRefused", exc.message, exc.field
    if is_out_of_memory(exc):
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return "OutOfMemoryError", f"{OOM_ADVICE} ({detail})", None
    message = str(exc) or type(exc).__name__
    if isinstance(exc, DatasetError):
        return type(exc).__name__, f"the data set is invalid: {message}", "data"
    return type(exc).__name__, message, None
