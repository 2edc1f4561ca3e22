"""The local provider: runs the trainer as a process of this machine, under the shared provider runner."""
from services.cloud.subscribers import wire_provider
from shared.service import run_service

from .compute import LocalCompute

if __name__ == "__main__":
    run_service("provider_local", owns=("provider_local",),
                wire=wire_provider(lambda ctx: LocalCompute(ctx.settings), lambda s: s.local_poll_interval_s))
