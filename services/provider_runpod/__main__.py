from services.cloud.subscribers import wire_cloud_provider
from shared.service import run_service

from .compute import RunPodCompute

if __name__ == "__main__":
    run_service("provider_runpod", owns=("provider_runpod",), wire=wire_cloud_provider(RunPodCompute()))
