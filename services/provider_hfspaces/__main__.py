"""The Hugging Face Spaces provider: a private Docker Space whose fixed start command fetches the bundle and runs the
bootstrap, created and followed with huggingface_hub."""
from services.cloud.subscribers import wire_provider
from shared.service import run_service

from .compute import SpacesCompute
from .model_check import wire_model_check

if __name__ == "__main__":
    run_service("provider_hfspaces", owns=("provider_hfspaces",),
                wire=wire_provider(lambda ctx: SpacesCompute(ctx.settings, ctx.pool), extra=wire_model_check))
