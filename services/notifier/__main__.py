"""The notifier: webhooks and emails about users' jobs."""
from shared.service import run_service

from .subscribers import wire

if __name__ == "__main__":
    run_service("notifier", owns=("notifier",), wire=wire)
