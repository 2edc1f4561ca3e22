from shared.service import run_service

from .subscribers import wire

if __name__ == "__main__":
    run_service("model_registry", owns=("model_registry",), wire=wire)
