from shared.service import run_service

from .subscribers import wire

if __name__ == "__main__":
    run_service("provider_local", owns=("provider_local",), wire=wire)
