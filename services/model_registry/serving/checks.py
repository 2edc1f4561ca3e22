"""The checks made on an adapter before an engine gets it.

Each problem is a ``Finding`` whose message names what is wrong and the fix. Errors stop a serving before an engine
starts; warnings are reported with it. Nothing here loads a tensor: the base model's module names come from the
safetensors headers (or ``model.safetensors.index.json``), so the checks are cheap and need neither torch nor
safetensors (the registry does not install the trainer's extras).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from shared.serving import Finding, ServerType

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
#: How many existing module names an error about unmatched target modules lists.
_SHOWN_NAMES = 12
#: A safetensors header larger than this is not a header (the format caps it at 100 MB).
_MAX_HEADER = 100_000_000
_ENGINE_NAMES = {ServerType.VLLM: "vLLM", ServerType.OLLAMA: "Ollama", ServerType.BUILTIN: "the built-in server"}
_MERGE_HINT = ("merge it (retrain with training.merge_adapter=true and take the merged model: "
               "GET /api/models/{id}/download?merged=true)")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _adapter_config(adapter_dir: Path) -> dict | None:
    config = _read_json(Path(adapter_dir) / ADAPTER_CONFIG)
    return config if isinstance(config, dict) else None


def _rank_values(config: dict) -> list[tuple[str, int]]:
    """``("r", r)`` and ``("rank_pattern.<key>", value)`` for each integer rank in an adapter configuration."""
    ranks: list[tuple[str, int]] = []
    r = config.get("r")
    if isinstance(r, int) and not isinstance(r, bool):
        ranks.append(("r", r))
    pattern = config.get("rank_pattern")
    if isinstance(pattern, dict):
        for key, value in pattern.items():
            if isinstance(value, int) and not isinstance(value, bool):
                ranks.append((f"rank_pattern.{key}", value))
    return ranks


def adapter_rank(adapter_dir: Path) -> int:
    """The largest LoRA rank of an adapter: the max of ``r`` and the ``rank_pattern`` values; 0 if unreadable."""
    config = _adapter_config(Path(adapter_dir))
    if config is None:
        return 0
    return max((value for _, value in _rank_values(config)), default=0)


def _has_template_value(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list):  # named templates: [{"name": ..., "template": ...}]
        return any(isinstance(item, dict) and _has_template_value(item.get("template")) for item in value)
    if isinstance(value, dict):
        return _has_template_value(value.get("chat_template")) or _has_template_value(value.get("template"))
    return False


def has_chat_template(folder: Path) -> bool:
    """Whether a model or adapter folder carries a chat template: ``chat_template.jinja``, ``chat_template.json``,
    ``additional_chat_templates/*.jinja`` or ``chat_template`` in ``tokenizer_config.json``."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    jinja = folder / "chat_template.jinja"
    try:
        if jinja.is_file() and jinja.read_text(encoding="utf-8").strip():
            return True
    except OSError:
        pass
    if _has_template_value(_read_json(folder / "chat_template.json")):
        return True
    extra = folder / "additional_chat_templates"
    if extra.is_dir() and any(p.is_file() and p.stat().st_size > 0 for p in extra.glob("*.jinja")):
        return True
    tokenizer_config = _read_json(folder / "tokenizer_config.json")
    return isinstance(tokenizer_config, dict) and _has_template_value(tokenizer_config.get("chat_template"))


def _safetensors_keys(path: Path) -> list[str]:
    """The tensor names in a safetensors file, read from its header: 8 bytes of little-endian length, then JSON."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path} is not a safetensors file")
        (size,) = struct.unpack("<Q", head)
        if size > _MAX_HEADER:
            raise ValueError(f"{path} has an implausible safetensors header")
        header = json.loads(f.read(size))
    return [key for key in header if key != "__metadata__"]


def base_weight_names(base_dir: Path) -> list[str] | None:
    """The weight names of a local model folder from its safetensors headers; None if it has no safetensors."""
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        return None
    index = _read_json(base_dir / "model.safetensors.index.json")
    if isinstance(index, dict) and isinstance(index.get("weight_map"), dict):
        return list(index["weight_map"])
    files = sorted(base_dir.glob("*.safetensors"))
    if not files:
        return None
    names: list[str] = []
    try:
        for file in files:
            names.extend(_safetensors_keys(file))
    except (OSError, ValueError):
        return None
    return names


def _module_names(weight_names: list[str]) -> set[str]:
    return {name.rsplit(".", 1)[0] for name in weight_names if "." in name}


def _unmatched_targets(target_modules: Any, modules: set[str]) -> list[str]:
    """The target_modules entries that name no module of the base (PEFT's rules: a string is a regular expression
    matched against whole module names, ``all-linear`` matches the linear layers, a list entry matches a module
    name or its suffix after a dot)."""
    if target_modules is None:
        return []
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            return []
        try:
            pattern = re.compile(target_modules)
        except re.error:
            return [target_modules]
        return [] if any(pattern.fullmatch(m) for m in modules) else [target_modules]
    unmatched = []
    for entry in target_modules:
        entry = str(entry)
        if entry == "all-linear":
            continue
        if not any(m == entry or m.endswith("." + entry) for m in modules):
            unmatched.append(entry)
    return unmatched


def _existing_names(modules: set[str]) -> list[str]:
    """A few module names that exist in the base, leaves first (``q_proj``, ``down_proj``...)."""
    leaves = sorted({m.rsplit(".", 1)[-1] for m in modules if not m.rsplit(".", 1)[-1].isdigit()})
    return leaves[:_SHOWN_NAMES]


def _as_local_path(value: Any) -> Path | None:
    if not isinstance(value, str) or not value:
        return None
    path = Path(value).expanduser()
    try:
        return path.resolve() if path.is_dir() else None
    except OSError:
        return None


def check_adapter(adapter_dir: Path, base_dir: Path | None, engine: ServerType, *,
                  max_rank: int = 512) -> list[Finding]:
    """What stops or warns about serving the adapter in ``adapter_dir`` over the base in ``base_dir`` (a local
    folder, or None for a Hub id: then the checks that read the base are skipped) on ``engine``."""
    adapter_dir = Path(adapter_dir)
    engine = ServerType(engine)
    engine_name = _ENGINE_NAMES[engine]
    hint_folder = ("point at the folder that holds adapter_config.json and adapter_model.safetensors "
                   "(the job's adapter output)")
    if adapter_dir.is_file():
        return [Finding(level="error", field="adapter_dir",
                        message=f"'{adapter_dir}' is a file ({adapter_dir.name}), not an adapter folder: "
                                f"{hint_folder}.")]
    if not adapter_dir.is_dir():
        return [Finding(level="error", field="adapter_dir",
                        message=f"'{adapter_dir}' does not exist: {hint_folder}.")]
    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():
        present = sorted(p.name for p in adapter_dir.iterdir())[:10]
        found = ", ".join(present) if present else "nothing"
        return [Finding(level="error", field="adapter_dir",
                        message=f"'{adapter_dir}' has no adapter_config.json (found: {found}): {hint_folder}.")]
    config = _adapter_config(adapter_dir)
    if config is None:
        return [Finding(level="error", field="adapter_config",
                        message=f"'{config_path}' is not a JSON object: re-save the adapter with PEFT's "
                                "save_pretrained, or point at the folder of a valid adapter.")]

    findings: list[Finding] = []
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHTS):
        findings.append(Finding(level="error", field="adapter_dir",
                                message=f"'{adapter_dir}' has adapter_config.json but no adapter_model.safetensors: "
                                        f"{hint_folder}."))

    if config.get("use_dora") and engine in (ServerType.VLLM, ServerType.OLLAMA):
        verb = "serve" if engine is ServerType.VLLM else "import"
        findings.append(Finding(level="error", field="adapter_config.use_dora",
                                message=f"{engine_name} does not {verb} DoRA adapters: {_MERGE_HINT} "
                                        "or serve on builtin."))

    modules_to_save = config.get("modules_to_save")
    if modules_to_save and engine in (ServerType.VLLM, ServerType.OLLAMA):
        names = ", ".join(map(str, modules_to_save)) if isinstance(modules_to_save, list) else str(modules_to_save)
        findings.append(Finding(level="warning", field="adapter_config.modules_to_save",
                                message=f"The adapter also trained whole modules ({names}); {engine_name} ignores "
                                        "or refuses such extra trained modules, so its answers will differ from "
                                        f"training: {_MERGE_HINT} or serve on builtin."))

    for key, value in _rank_values(config):
        if value > max_rank:
            findings.append(Finding(level="error", field=f"adapter_config.{key}",
                                    message=f"LoRA rank {key}={value} is above the limit of {max_rank} on "
                                            f"{engine_name}: retrain with a lower training.lora.r, or "
                                            f"{_MERGE_HINT}."))

    if base_dir is not None:
        base_dir = Path(base_dir)
        weight_names = base_weight_names(base_dir)
        if weight_names:
            modules = _module_names(weight_names)
            unmatched = _unmatched_targets(config.get("target_modules"), modules)
            if unmatched:
                existing = ", ".join(_existing_names(modules))
                findings.append(Finding(level="error", field="adapter_config.target_modules",
                                        message=f"target_modules {', '.join(unmatched)} match no module of the "
                                                f"base model at '{base_dir}' (it has e.g. {existing}); vLLM "
                                                "silently falls back to the base model on mismatched names: "
                                                "serve the adapter on the base it was trained on, or retrain "
                                                "with target_modules that exist."))
        trained_on = _as_local_path(config.get("base_model_name_or_path"))
        try:
            served_on = base_dir.resolve()
        except OSError:
            served_on = base_dir
        if trained_on is not None and trained_on != served_on:
            findings.append(Finding(level="warning", field="adapter_config.base_model_name_or_path",
                                    message=f"The adapter was trained on '{trained_on}', not on '{served_on}': "
                                            "unless both hold the same model its answers will be wrong; serve it "
                                            "over the base it was trained on."))
        if not has_chat_template(adapter_dir) and not has_chat_template(base_dir):
            findings.append(Finding(level="warning", field="chat_template",
                                    message="Neither the adapter nor the base model has a chat template, so chat "
                                            "completions will be refused: use /v1/completions with a plain prompt, "
                                            "or add a chat_template to the tokenizer (tokenizer_config.json or "
                                            "chat_template.jinja)."))
    return findings
