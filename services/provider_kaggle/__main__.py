"""The Kaggle provider: a fixed kernel script that runs the job attached to it as a private dataset."""
from services.cloud.subscribers import wire_provider
from shared.service import run_service

from .compute import KaggleCompute

if __name__ == "__main__":
    run_service("provider_kaggle", owns=("provider_kaggle",),
                wire=wire_provider(lambda ctx: KaggleCompute(ctx.settings)))
