"""``POST /api/training/estimate``: the estimator (``shared.estimate``) applied to a configuration, its data set and
its base model's ``config.json`` (a local model folder the policy allows, or the Hugging Face hub)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from shared import estimate
from shared.catalogue import Offer
from shared.config import TrainingConfig
from shared.errors import ServiceUnavailable, ValidationFailed

from . import repository
from .catalogue import catalogues
from .deploying import ResolvedData
from .schemas import EstimateCandidate, EstimateResponse

#: The longest a read of config.json from the hub may take.
HUB_TIMEOUT_S = 20.0


def _read_json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed(f"model.base_model: {path} cannot be read as JSON ({type(exc).__name__})",
                               field="model.base_model") from exc
    if not isinstance(found, dict):
        raise ValidationFailed(f"model.base_model: {path} is not a JSON object", field="model.base_model")
    return found


def _local_config(path: Path, depth: int = 0) -> dict[str, Any]:
    """The config.json of a model folder, or of the base model an adapter folder names."""
    if (path / "config.json").is_file():
        return _read_json(path / "config.json")
    adapter = path / "adapter_config.json"
    if adapter.is_file() and depth < 2:
        base = _read_json(adapter).get("base_model_name_or_path")
        if isinstance(base, str) and base.startswith("/"):
            return _local_config(Path(base), depth + 1)
        if isinstance(base, str):
            return _hub_config(base, None)
    raise ValidationFailed(f"model.base_model {str(path)!r} holds no config.json", field="model.base_model")


def _hub_config(repo: str, revision: str | None) -> dict[str, Any]:
    from huggingface_hub import errors as hub
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(repo, "config.json", revision=revision, etag_timeout=10)).read_text())
    except hub.LocalEntryNotFoundError as exc:  # not cached here, and the hub unreachable (or offline)
        raise ServiceUnavailable(f"the Hugging Face hub could not be reached for {repo}'s config.json and it is not "
                                 "cached here; try again, or give a local model folder") from exc
    except (hub.RepositoryNotFoundError, hub.RevisionNotFoundError, hub.EntryNotFoundError, hub.GatedRepoError) as exc:
        raise ValidationFailed(f"model.base_model {repo!r}: the hub has no readable config.json for it "
                               f"({type(exc).__name__}); check the id and revision, or give a local model folder",
                               field="model.base_model") from exc
    except Exception as exc:  # the hub unreachable: the same request may work later
        raise ServiceUnavailable(f"the Hugging Face hub could not be reached for {repo}'s config.json "
                                 f"({type(exc).__name__}); try again, or give a local model folder") from exc


async def model_config(config: TrainingConfig) -> dict[str, Any]:
    base = config.model.base_model
    if base.startswith("/"):  # the policy has allowed the folder
        return await asyncio.to_thread(_local_config, Path(base))
    try:
        return await asyncio.wait_for(asyncio.to_thread(_hub_config, base, config.model.revision), HUB_TIMEOUT_S)
    except TimeoutError as exc:
        raise ServiceUnavailable(f"the Hugging Face hub did not answer in {HUB_TIMEOUT_S:.0f} s for {base}'s "
                                 "config.json; try again") from exc


def estimate_for(config: TrainingConfig, raw_model: dict[str, Any], data: ResolvedData, offers: list[Offer],
                 gpu_type: str | None, unanswered: list[str] | None = None) -> EstimateResponse:
    """The estimate, and per offer of the catalogue (or the one ``gpu_type`` names) whether the job fits on one of
    its GPUs, the hours on all of them (data-parallel) and the cost at its price."""
    try:
        shape = estimate.ModelShape.from_config(raw_model)
    except estimate.ModelConfigError as exc:
        raise ValidationFailed(f"model.base_model: {exc}", field="model.base_model") from exc
    if gpu_type is not None:
        named = [o for o in offers if o.gpu_type == gpu_type]
        if not named:
            known = sorted({o.gpu_type for o in offers})
            missing = f" (no offers from {'; '.join(unanswered)})" if unanswered else ""
            raise ValidationFailed(f"gpu_type {gpu_type!r} is not offered to you{missing}: use one of "
                                   f"{', '.join(known)} (GET /api/gpus), or leave it out for all", field="gpu_type")
        offers = named
    shape_of_data = estimate.data_shape(config, data.rows, data.stats)
    per_batch = estimate.batch_tokens(config, shape_of_data)
    mem = estimate.memory(shape, config, batch_tokens=per_batch, row_tokens=shape_of_data.longest_row)
    tokens = estimate.training_tokens(config, shape_of_data)
    flops = estimate.step_flops(shape, config, tokens, mem.trainable_params)
    candidates, unknown = [], []
    gpus = config.training.gpu_count  # the trainer runs this many processes, whatever the machine has
    for offer in offers:
        spec = estimate.gpu_spec(f"{offer.gpu_type} {offer.description}", offer.vram_gb)
        if spec is None:
            unknown.append(f"{offer.provider} {offer.gpu_type}")
            continue
        ok, why = estimate.fits(mem, spec.vram_gib, gpus)
        if offer.gpu_count < gpus:
            ok, why = False, (f"offers {offer.gpu_count} GPU(s); the configuration trains on {gpus} "
                              "(training.gpu_count)")
        took = estimate.hours(flops, spec, gpus)
        price = None if offer.usd_per_hour is None else offer.usd_per_hour * (gpus if offer.per_gpu else 1)
        candidates.append(EstimateCandidate(
            provider=offer.provider, gpu_type=offer.gpu_type, description=offer.description, gpu_count=gpus,
            vram_gib=round(spec.vram_gib, 1), tflops_16bit=spec.tflops_16bit, fits=ok, reason=why, hours=took,
            usd_per_hour=price, capacity=offer.capacity, cost_usd=None if price is None else round(took * price, 4)))
    candidates.sort(key=lambda c: (not c.fits, c.cost_usd is None, c.cost_usd or 0.0, c.hours))
    notes = [f"tokens = characters / {estimate.CHARS_PER_TOKEN:g}, cut at model.max_seq_length",
             f"time at {estimate.EFFICIENCY:.0%} of each GPU's dense 16-bit peak (NVIDIA datasheets), data-parallel "
             "over training.gpu_count GPUs; a machine's other GPUs idle but are paid for",
             f"needed = peak allocations + {estimate.ALLOCATOR_SLACK:.0%} allocator slack + "
             f"{estimate.CUDA_CONTEXT_BYTES / estimate.GIB:.1f} GiB CUDA context", *mem.notes]
    if unknown:
        notes.append(f"not estimated (GPU or memory unknown): {', '.join(unknown)}")
    notes.extend(f"no offers from {why}" for why in unanswered or [])
    return EstimateResponse(
        model={"params": shape.params, "trainable_params": mem.trainable_params, "layers": shape.layers,
               "hidden_size": shape.hidden, "vocab_size": shape.vocab},
        data={"rows": shape_of_data.rows, "tokens_per_row": round(shape_of_data.tokens_per_row, 1),
              "longest_row_tokens": shape_of_data.longest_row, "batch_tokens": per_batch,
              "training_tokens": tokens},
        memory=mem.as_dict(), flops=flops, candidates=candidates, assumptions=notes)


async def estimate_with_offers(broker, pool, user: str, config: TrainingConfig, data: ResolvedData, *,
                               only: str | None = None, gpu_type: str | None = None) -> tuple[EstimateResponse,
                                                                                                dict[str, str]]:
    """The estimate over the user's catalogues (``only`` one provider's), and per provider with no offers, why."""
    raw_model = await model_config(config)
    stored = {s["provider"] for s in await repository.list_secrets(pool, user)}
    found = await catalogues(broker, user, stored, only=only)
    offers = [o for c in found for o in c.offers]
    unanswered = {c.provider: c.error for c in found if c.error and not c.offers}
    answer = estimate_for(config, raw_model, data, offers, gpu_type,
                          unanswered=[f"{provider}: {why}" for provider, why in unanswered.items()])
    return answer, unanswered
