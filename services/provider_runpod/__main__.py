"""The RunPod provider: a pod whose fixed start command fetches the job bundle and runs the bootstrap."""
from services.cloud.subscribers import wire_provider
from shared.service import run_service

from .compute import RunPodCompute

if __name__ == "__main__":
    run_service("provider_runpod", owns=("provider_runpod",),
                wire=wire_provider(lambda ctx: RunPodCompute(ctx.settings)))
