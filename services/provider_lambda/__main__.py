"""The Lambda Cloud provider: a plain instance reached over SSH (paramiko) and SFTP."""
from services.cloud.subscribers import wire_provider
from shared.service import run_service

from .compute import LambdaCompute

if __name__ == "__main__":
    run_service("provider_lambda", owns=("provider_lambda",),
                wire=wire_provider(lambda ctx: LambdaCompute(ctx.settings, ctx.pool)))
