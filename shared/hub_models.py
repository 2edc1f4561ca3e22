"""The specification's first step, model selection, against the Hugging Face Hub: the base model must exist, be
readable with the user's token (gated and private repos), and have a causal-LM config and a tokenizer.

The check runs where the user's token can be opened (a provider service: the gateway cannot unseal credentials),
asked over NATS request/reply (``subjects.HUB_MODEL_CHECK``), through ``huggingface_hub`` with a client of its
own per call (``HfApi(endpoint, token)``), so one user's token never serves another's check. It answers one of:

* ``verified``: with the resolved revision (the commit), the architecture, the parameter count (the safetensors
  index's, else computed from the config) and whether the repo is gated;
* ``refused``: with the reason and the fix, naming ``model.base_model`` (or ``model.revision``);
* ``skipped``: the Hub could not be reached (offline, a time-out): the save goes on, saying so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

try:  # huggingface_hub 2.x carries its calls with httpx2, 1.x with httpx
    import httpx2

    TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.HTTPError, httpx2.HTTPError)
except ImportError:  # pragma: no cover - huggingface_hub 1.x
    TRANSPORT_ERRORS = (httpx.HTTPError,)

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
CAUSAL_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")
FIX_TOKEN = "store a token of an account that can read it with PUT /api/secrets/huggingface"


class HubModelCheck(BaseModel):
    status: Literal["verified", "refused", "skipped"]
    repo: str
    revision: str | None = Field(default=None, description="The commit the check resolved (model.revision, or main).")
    architecture: str | None = None
    parameters: int | None = None
    gated: bool | None = None
    private: bool | None = None
    reason: str | None = Field(default=None, description="Why it was refused or skipped.")
    field: str | None = None


class HubCheckRequest(BaseModel):
    user_id: str
    repo: str
    revision: str | None = None


def is_hub_id(base_model: str) -> bool:
    """A hub id (``owner/name`` or ``name``), not a folder of this server."""
    return not base_model.startswith(("/", ".", "~"))


def check_hub_model(repo: str, revision: str | None, token: str | None, *, timeout_s: float = 10.0) -> HubModelCheck:
    """Blocking: run it in a thread."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub import errors as hub

    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    api = HfApi(endpoint=endpoint, token=token or False)
    named = f"model.base_model {repo!r}"
    try:
        info = api.model_info(repo, revision=revision, timeout=timeout_s)
        files = {s.rfilename for s in info.siblings or []}
        if "config.json" not in files:
            return _refused(repo, f"{named} has no config.json on the Hub, so it is not a transformers model; choose "
                                  "a causal language model (e.g. Qwen/Qwen2.5-0.5B)")
        path = hf_hub_download(repo, "config.json", revision=info.sha, token=token or False, endpoint=endpoint,
                               etag_timeout=timeout_s)
        config = json.loads(Path(path).read_text())
    except hub.GatedRepoError:
        return _refused(repo, f"{named} is gated and your token has no access to it: request access on "
                              f"{endpoint}/{repo} and {FIX_TOKEN}")
    except hub.RevisionNotFoundError:
        return _refused(repo, f"model.revision {revision!r} is not a branch, tag or commit of {repo!r}; leave it out "
                              "for main", field="model.revision")
    except hub.RepositoryNotFoundError:
        return _refused(repo, f"{named} is not on the Hub, or it is private and your token cannot read it: check "
                              f"the id, or {FIX_TOKEN}")
    except hub.HfHubHTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        if code in (401, 403):
            return _refused(repo, f"the Hub refused to let your token read {named}: {FIX_TOKEN}")
        return _skipped(repo, f"the Hub answered {code} for {repo}")
    except (OSError, ValueError, *TRANSPORT_ERRORS, hub.LocalEntryNotFoundError) as exc:  # offline, unreachable
        return _skipped(repo, f"the Hub could not be reached ({type(exc).__name__})")
    architecture = _architecture(config)
    if architecture is None:
        found = ", ".join(config.get("architectures") or []) or config.get("model_type") or "none"
        return _refused(repo, f"{named} has no causal-LM config (its architectures: {found}); TuneFleet fine-tunes "
                              "decoder language models: choose one whose config names a ...ForCausalLM class")
    if not files & set(TOKENIZER_FILES):
        return _refused(repo, f"{named} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])} ...); choose a "
                              "repo that ships its tokenizer")
    total = getattr(info.safetensors, "total", None) if info.safetensors else None
    return HubModelCheck(status="verified", repo=repo, revision=info.sha, architecture=architecture,
                         parameters=int(total) if total else _params_from(config), gated=bool(info.gated),
                         private=bool(info.private))


def _architecture(config: dict[str, Any]) -> str | None:
    for name in config.get("architectures") or []:
        if isinstance(name, str) and name.endswith(CAUSAL_SUFFIXES):
            return name
    return None


def _params_from(config: dict[str, Any]) -> int | None:
    from .estimate import ModelConfigError, ModelShape

    try:
        return ModelShape.from_config(config).params
    except (ModelConfigError, KeyError, TypeError, ValueError):
        return None


def _refused(repo: str, reason: str, field: str = "model.base_model") -> HubModelCheck:
    return HubModelCheck(status="refused", repo=repo, reason=reason, field=field)


def _skipped(repo: str, reason: str) -> HubModelCheck:
    return HubModelCheck(status="skipped", repo=repo, reason=f"{reason}: the base model was not checked")
