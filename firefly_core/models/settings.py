"""The user's settings: active model, UI language, and per-model prompt format and generation defaults.

Stored as JSON in `paths.config_file()` (platformdirs config dir, or `$FIREFLY_HOME/config`),
written atomically so the app and the CLI never see half a file. Unknown keys (written by a newer
version) are kept on save. A damaged file is reported with its path, never silently replaced.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import atomic, paths
from ..errors import ConfigError
from ..jsonfile import read_json

SCHEMA_VERSION = 1
# The engine choices a model's settings may hold (the model service, models/service.py, acts on them).
ENGINES = ("torch", "llamacpp")
TORCH_QUANTIZE = ("int8",)
LLAMACPP_QUANTIZE = ("bf16", "f16", "f32", "q8_0", "q4_k_m")
QUANTIZE_CHOICES = TORCH_QUANTIZE + LLAMACPP_QUANTIZE


@dataclass
class ModelSettings:
    """Per-model choices; None means "the model's own default" (generation_config, catalog)."""

    prompt_format: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    max_new_tokens: int | None = None
    system: str | None = None
    trust_remote_code: bool = False
    # Engine choices (owned by the model service, firefly_core.models.service); None = automatic.
    engine: str | None = None  # "torch" | "llamacpp"
    quantize: str | None = None  # torch: "int8"; llama.cpp: "bf16" | "f16" | "q8_0" | "q4_k_m"
    cuda_graph: bool | None = None  # None = on where it works
    threads: int | None = None  # decode threads; None = chosen by the service

    def validate(self, where: str = "model settings") -> None:
        from ..formats import FORMAT_NAMES

        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"{where}: {name} = {getattr(self, name)!r} {why}")

        if self.prompt_format is not None and self.prompt_format not in FORMAT_NAMES:
            raise ConfigError(
                f"{where}: unknown prompt format {self.prompt_format!r}",
                f"choose one of: {', '.join(FORMAT_NAMES)}",
            )
        for name in ("temperature", "top_p", "repetition_penalty"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise bad(name, "is not a number")
        for name in ("top_k", "max_new_tokens"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise bad(name, "is not a whole number")
        try:  # the ranges are GenerationConfig's own rules: one validation for every front end
            from ..generation.config import GenerationConfig

            GenerationConfig().with_overrides(**self.generation_overrides())
        except ConfigError as e:
            raise ConfigError(f"{where}: {e.message}", e.hint) from None
        if self.system is not None and not isinstance(self.system, str):
            raise bad("system", "is not text")
        if not isinstance(self.trust_remote_code, bool):
            raise bad("trust_remote_code", "must be true or false")
        if self.engine is not None and self.engine not in ENGINES:
            raise ConfigError(f"{where}: unknown engine {self.engine!r}", f"choose one of: {', '.join(ENGINES)}")
        if self.quantize is not None and self.quantize not in QUANTIZE_CHOICES:
            raise ConfigError(
                f"{where}: unknown quantization {self.quantize!r}", f"choose one of: {', '.join(QUANTIZE_CHOICES)}"
            )
        if self.cuda_graph is not None and not isinstance(self.cuda_graph, bool):
            raise bad("cuda_graph", "must be true or false")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise bad("threads", "must be a whole number, 1 or more")

    def generation_overrides(self) -> dict[str, Any]:
        """The generation fields the user set, ready for GenerationConfig(**...)."""
        from ..generation.config import GENERATION_KEYS as names

        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass
class UserSettings:
    active_model: str | None = None
    language: str | None = None
    models: dict[str, ModelSettings] = field(default_factory=dict)
    # Keys this version does not know, kept so a newer firefly's settings survive an older one.
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def for_model(self, model_id: str) -> ModelSettings:
        """The settings of `model_id` (a fresh default when there are none; not stored)."""
        return self.models.get(str(model_id), ModelSettings())


_MODEL_FIELDS = {f.name for f in fields(ModelSettings)}


def _model_from_dict(data: Any, where: str) -> ModelSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} is not a table of settings")
    known = {k: v for k, v in data.items() if k in _MODEL_FIELDS}
    ms = ModelSettings(**known)
    ms.validate(where)
    return ms


def _model_to_dict(ms: ModelSettings) -> dict[str, Any]:
    out = {k: v for k, v in asdict(ms).items() if v is not None}
    if not out.get("trust_remote_code"):
        out.pop("trust_remote_code", None)
    return out


def settings_from_dict(data: dict[str, Any], source: str = "settings") -> UserSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"{source} does not hold a JSON object")
    models_raw = data.get("models") or {}
    if not isinstance(models_raw, dict):
        raise ConfigError(f"{source}: 'models' is not a table")
    for key in ("active_model", "language"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ConfigError(f"{source}: {key} must be text")
    models = {str(mid): _model_from_dict(raw, f"{source}: models[{mid!r}]") for mid, raw in models_raw.items()}
    extra = {k: v for k, v in data.items() if k not in ("version", "active_model", "language", "models")}
    return UserSettings(data.get("active_model"), data.get("language"), models, extra)


def settings_to_dict(s: UserSettings) -> dict[str, Any]:
    out: dict[str, Any] = dict(s.extra)
    out["version"] = SCHEMA_VERSION
    if s.active_model is not None:
        out["active_model"] = s.active_model
    if s.language is not None:
        out["language"] = s.language
    models = {mid: _model_to_dict(ms) for mid, ms in sorted(s.models.items())}
    out["models"] = {mid: d for mid, d in models.items() if d}
    return out


def load_settings(path: Path | None = None) -> UserSettings:
    """The saved settings, or defaults when there is no file yet.

    A file that cannot be used (not UTF-8, not JSON, nested too deeply, wrong types) is a
    ConfigError naming it; it is never rewritten or replaced here."""
    path = Path(path) if path else paths.config_file()
    try:
        data = read_json(
            path,
            what="the settings file",
            error=ConfigError,
            hint="fix it by hand, or move it away to start from defaults (firefly has not changed it)",
            max_bytes=16 * 1024 * 1024,
            if_empty={},
        )
    except FileNotFoundError:
        return UserSettings()
    return settings_from_dict(data, str(path))


def save_settings(s: UserSettings, path: Path | None = None) -> None:
    """Write the settings atomically (readers see the old file or the new one)."""
    for mid, ms in s.models.items():
        ms.validate(f"settings of {mid}")
    atomic.write_json(Path(path) if path else paths.config_file(), settings_to_dict(s))


def set_active_model(model_id: str | None) -> UserSettings:
    """Make `model_id` the model `firefly chat` and the app use when none is given."""
    s = load_settings()
    s.active_model = model_id
    save_settings(s)
    return s


def update_model_settings(model_id: str, **changes: Any) -> ModelSettings:
    """Change some of a model's settings (unknown names are an error) and save; returns the result."""
    unknown = set(changes) - _MODEL_FIELDS
    if unknown:
        raise ConfigError(f"unknown model setting(s): {', '.join(sorted(unknown))}")
    s = load_settings()
    current = asdict(s.for_model(model_id))
    current.update(changes)
    ms = ModelSettings(**current)
    ms.validate(f"settings of {model_id}")
    s.models[str(model_id)] = ms
    save_settings(s)
    return ms
