"""The end-to-end tests' helpers; the stack and the emulated clouds are session fixtures of ``tests.cloudstack``."""

from __future__ import annotations

from tests.cloudstack import (
    LAMBDA_KEY,
    PROVISIONING_TIMEOUT_S,
    RUNPOD_KEY,
    TERMINAL,
    EmulatorServer,
    RunningStack,
    collect_events,
    wait_for_status,
)

__all__ = ["LAMBDA_KEY", "PROVISIONING_TIMEOUT_S", "RUNPOD_KEY", "TERMINAL", "EmulatorServer", "RunningStack",
           "collect_events", "wait_for_status"]
