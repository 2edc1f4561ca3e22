from services.cloud.subscribers import wire_cloud_provider
from shared.service import run_service
from shared.settings import Settings

from .compute import LambdaCompute

if __name__ == "__main__":
    run_service("provider_lambda", owns=("provider_lambda",), wire=wire_cloud_provider(LambdaCompute(Settings())))
