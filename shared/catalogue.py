"""What GPUs each provider offers, at what price: the cloud providers' live answers (asked by their own services,
with the user's own credentials, ``subjects.catalogue``) and documented tables for the ones whose prices are a page,
not an API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class Offer(BaseModel):
    """One thing a provider rents out: a GPU type (RunPod), an instance type (Lambda), a hardware flavour."""

    provider: str
    gpu_type: str = Field(description="What to deploy with: RunPod's gpu_type, Lambda's instance_type, a flavour.")
    description: str
    gpu_count: int = 1
    vram_gb: float | None = Field(default=None, description="Per GPU, as the provider states it (GB).")
    usd_per_hour: float | None = Field(description="For the whole offer (every GPU of it), or per GPU where "
                                                   "per_gpu; 0 when free.")
    per_gpu: bool = Field(default=False, description="Priced per GPU, as many as a deploy asks for (RunPod).")
    capacity: bool | None = Field(default=None, description="Available now; None where the provider does not say.")
    regions: list[str] | None = Field(default=None, description="Regions with capacity, where the provider says.")
    source: str = Field(description="Where the figures come from: the provider's API, or a documented page.")


class CatalogueRequest(BaseModel):
    user_id: str


class Catalogue(BaseModel):
    """A provider's offers as its service last read them."""

    provider: str
    offers: list[Offer] = Field(default_factory=list)
    fetched_at: datetime | None = None
    stale: bool = Field(default=False, description="The API did not answer this time: these are the last it gave.")
    error: str | None = None


#: Hugging Face Spaces' GPU hardware (flavours as ``huggingface_hub.SpaceHardware`` names them), from the price
#: table of https://huggingface.co/docs/hub/spaces-gpus (read 2026-12). Spaces bills by the hour while running.
HF_SPACES_SOURCE = "https://huggingface.co/docs/hub/spaces-gpus (documented table, read 2026-12)"
HF_SPACES: list[tuple[str, str, int, float, float]] = [  # flavour, description, GPUs, GB per GPU, $/h
    ("t4-small", "Nvidia T4 - small", 1, 16, 0.40),
    ("t4-medium", "Nvidia T4 - medium", 1, 16, 0.60),
    ("l4x1", "1x Nvidia L4", 1, 24, 0.80),
    ("l4x4", "4x Nvidia L4", 4, 24, 3.80),
    ("a10g-small", "Nvidia A10G - small", 1, 24, 1.00),
    ("a10g-large", "Nvidia A10G - large", 1, 24, 1.50),
    ("a10g-largex2", "2x Nvidia A10G - large", 2, 24, 3.00),
    ("a10g-largex4", "4x Nvidia A10G - large", 4, 24, 5.00),
    ("l40sx1", "1x Nvidia L40S", 1, 48, 1.80),
    ("l40sx4", "4x Nvidia L40S", 4, 48, 8.30),
    ("l40sx8", "8x Nvidia L40S", 8, 48, 23.50),
    ("a100-large", "Nvidia A100 - large", 1, 80, 2.50),
]

#: Kaggle notebooks: free GPUs within a weekly quota, from https://www.kaggle.com/docs/efficient-gpu-usage
#: (read 2026-12): about 30 GPU hours a week, sessions of up to 12 hours.
KAGGLE_SOURCE = ("https://www.kaggle.com/docs/efficient-gpu-usage (documented: free, a weekly quota of about 30 GPU "
                 "hours, sessions up to 12 h; read 2026-12)")
KAGGLE: list[tuple[str, str, int, float]] = [  # machine shape, description, GPUs, GB per GPU
    ("NvidiaTeslaT4", "2x Nvidia Tesla T4 (Kaggle notebook)", 2, 16),
    ("NvidiaTeslaP100", "Nvidia Tesla P100 (Kaggle notebook)", 1, 16),
]


def documented() -> list[Catalogue]:
    """The providers whose offers are documented tables rather than an API's answer."""
    spaces = [Offer(provider="hfspaces", gpu_type=flavour, description=text, gpu_count=n, vram_gb=gb,
                    usd_per_hour=price, source=HF_SPACES_SOURCE) for flavour, text, n, gb, price in HF_SPACES]
    kaggle = [Offer(provider="kaggle", gpu_type=shape, description=text, gpu_count=n, vram_gb=gb, usd_per_hour=0.0,
                    source=KAGGLE_SOURCE) for shape, text, n, gb in KAGGLE]
    return [Catalogue(provider="hfspaces", offers=spaces), Catalogue(provider="kaggle", offers=kaggle)]
