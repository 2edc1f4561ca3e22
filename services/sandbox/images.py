"""The images the RunPod emulator knows, by the names a deploy would use."""

from __future__ import annotations

import sys
from pathlib import Path

from shared.settings import Settings

from .machines import MachineImage, StockImages

#: An image built with TuneFleet's trainer installed (``pip install 'tunefleet[trainer]'``), as a user may bring.
TRAINER_IMAGE = "ghcr.io/example/tunefleet-trainer:dev"


def sandbox_images(stock: StockImages, *, pull_s: float = 1.0) -> dict[str, MachineImage]:
    """The default stock image, and an image that already has this TuneFleet (this interpreter's environment)."""
    default = Settings.model_fields["runpod_default_image"].default
    return {
        default: MachineImage(default, stock.runpod / "bin", pull_s=pull_s),
        TRAINER_IMAGE: MachineImage(TRAINER_IMAGE, Path(sys.executable).parent, pull_s=pull_s),
    }
