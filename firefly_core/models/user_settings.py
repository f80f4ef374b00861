"""The user's saved settings file: active model, UI language, and each model's settings.

Stored as JSON in `paths.config_file()` (platformdirs config dir, or `$FIREFLY_HOME/config`),
written atomically so the app and the CLI never see half a file. Unknown keys (written by a newer
version) are kept on save. A damaged file is reported with its path, never silently replaced.

A model's settings (`ModelSettings`) are not listed here: they are its own few fields (prompt
format, system prompt, remote code) plus the declared settings of `GenerationConfig` and
`EngineSettings`, so a field declared there is saved, read back and checked here without an edit.
Every value is checked by its declaration's one rule (`setting_spec.check_setting`) when it is
saved AND when a file someone edited is read back: a bad value is a ConfigError naming the file,
the model and the field, and the file is left as it is. (Not "ignored with a warning": the value
is the user's choice, a run that silently differs from it is worse than a message saying which
line to fix, and a later save would drop it.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .. import atomic, paths
from ..errors import ConfigError
from ..formats import FORMAT_NAMES
from ..generation.config import GENERATION_KEYS, GenerationConfig
from ..jsonfile import read_json
from ..setting_spec import check_setting, include_settings, setting, setting_fields
from .engine_settings import (  # noqa: F401 (the engine choices, re-exported for the front ends)
    ENGINE_KEYS,
    ENGINES,
    LLAMACPP_QUANTIZE,
    QUANTIZE_CHOICES,
    TORCH_QUANTIZE,
    EngineSettings,
    check_engine_installed,
    check_engine_settings,
)
from .names import check_model_name

SCHEMA_VERSION = 1


@dataclass
@include_settings((GenerationConfig, GENERATION_KEYS), (EngineSettings, None))
class ModelSettings:
    """Per-model choices; None means "the model's own default" (generation_config, catalog) or,
    for the engine fields, "the automatic choice". Fields: the three below, then every declared
    setting of GenerationConfig (temperature, top_p, …) and EngineSettings (engine, threads, …)."""

    prompt_format: str | None = field(default=None, metadata=setting(
        "prompt format (default: from the model)", choices=FORMAT_NAMES, flag="--format"))
    system: str | None = field(default=None, metadata=setting("system prompt"))
    trust_remote_code: bool = field(default=False, metadata=setting("allow the model's own Python code"))

    def validate(self, where: str = "model settings", *, saving: bool = False) -> None:
        """Each field by its declared rule, the engine pairing, the generation fields together as
        GenerationConfig takes them; `saving` also refuses settings that need an extra that is
        not installed (they would fail every later run)."""
        if self.trust_remote_code is None:  # the one setting without a "not chosen" value
            raise ConfigError(f"{where}: trust_remote_code must be true or false" if where else
                              "trust_remote_code must be true or false")
        for f, spec, kind in setting_fields(ModelSettings):
            if f.name not in ENGINE_KEYS:  # those below, with their engine/quantization pairing
                check_setting(f.name, spec, kind, getattr(self, f.name), where)
        check_engine_settings(self, where)
        try:  # the fields' combination: GenerationConfig's own validation
            GenerationConfig().with_overrides(**self.generation_overrides())
        except ConfigError as e:
            raise ConfigError(f"{where}: {e.message}" if where else e.message, e.hint) from None
        if saving:
            check_engine_installed(self)

    def generation_overrides(self) -> dict[str, Any]:
        """The generation fields the user set, ready for GenerationConfig(**...)."""
        return {n: getattr(self, n) for n in GENERATION_KEYS if getattr(self, n) is not None}


MODEL_KEYS: tuple[str, ...] = tuple(f.name for f in fields(ModelSettings))


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


def _model_from_dict(data: Any, where: str) -> ModelSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} is not a table of settings")
    known = {k: v for k, v in data.items() if k in MODEL_KEYS}
    ms = ModelSettings(**known)
    ms.validate(where)
    return ms


def _model_to_dict(ms: ModelSettings) -> dict[str, Any]:
    out = {k: v for k, v in asdict(ms).items() if v is not None}
    if not out.get("trust_remote_code"):
        out.pop("trust_remote_code", None)
    return out


def settings_from_dict(
    data: dict[str, Any], source: str = "settings", *, replacing: str | None = None, replacing_active: bool = False
) -> UserSettings:
    """The settings in `data` (read from `source`), each value checked. `replacing` names a model
    whose entry is about to be replaced and `replacing_active` says the active model is: those
    are not parsed, so a hand-broken entry can be repaired by the command that replaces it."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} does not hold a JSON object")
    models_raw = data.get("models") or {}
    if not isinstance(models_raw, dict):
        raise ConfigError(f"{source}: 'models' is not a table")
    for key in ("active_model", "language"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ConfigError(f"{source}: {key} must be text")
    if data.get("active_model") is not None and not replacing_active:
        check_model_name(data["active_model"], where=f"{source}: active_model")
    models = {}
    for mid, raw in models_raw.items():
        if replacing is not None and mid == replacing:
            continue
        check_model_name(mid, where=f"{source}: models")
        models[str(mid)] = _model_from_dict(raw, f"{source}: models[{mid!r}]")
    extra = {k: v for k, v in data.items() if k not in ("version", "active_model", "language", "models")}
    active = None if replacing_active else data.get("active_model")
    return UserSettings(active, data.get("language"), models, extra)


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


def load_settings(path: Path | None = None, *, replacing: str | None = None, replacing_active: bool = False) -> UserSettings:
    """The saved settings, or defaults when there is no file yet.

    A file that cannot be used (not UTF-8, not JSON, nested too deeply, wrong types) is a
    ConfigError naming it (and the model and field, for a bad value); it is never rewritten or
    replaced here. `replacing`/`replacing_active`: see settings_from_dict."""
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
    try:
        return settings_from_dict(data, str(path), replacing=replacing, replacing_active=replacing_active)
    except ConfigError as e:
        raise ConfigError(e.message, f"fix that value in {path}, or clear the model's settings with: "
                          "firefly use MODEL --reset (or choose another model with: firefly use MODEL)") from None


def save_settings(s: UserSettings, path: Path | None = None) -> None:
    """Write the settings atomically (readers see the old file or the new one), after checking
    them by the same rules a read applies (a saved value never breaks a later run)."""
    if s.active_model is not None:
        check_model_name(s.active_model, where="active model")
    for mid, ms in s.models.items():
        check_model_name(mid, where="model")
        ms.validate(f"settings of {mid}")
    atomic.write_json(Path(path) if path else paths.config_file(), settings_to_dict(s))


def set_active_model(model_id: str | None) -> UserSettings:
    """Make `model_id` the model `firefly chat` and the app use when none is given."""
    s = load_settings(replacing_active=True)
    s.active_model = model_id
    save_settings(s)
    return s


def update_model_settings(model_id: str, *, reset: bool = False, activate: bool = False, **changes: Any) -> ModelSettings:
    """Change some of a model's settings and save (one read, one atomic write); returns the result.

    Unknown names are an error; a None value clears that setting; `reset` starts from the
    defaults (and so also repairs an entry someone broke by hand); `activate` also makes it the
    active model (replacing one that could not be read). Values are checked as a save checks
    them, and settings that need an extra that is not installed (llama.cpp) are refused."""
    unknown = set(changes) - set(MODEL_KEYS)
    if unknown:
        raise ConfigError(f"unknown model setting(s): {', '.join(sorted(unknown))}")
    check_model_name(model_id, where="model")
    s = load_settings(replacing=model_id if reset else None, replacing_active=activate)
    current = asdict(ModelSettings() if reset else s.for_model(model_id))
    current.update(changes)
    ms = ModelSettings(**current)
    ms.validate(f"settings of {model_id}", saving=True)
    s.models[str(model_id)] = ms
    if activate:
        s.active_model = str(model_id)
    save_settings(s)
    return ms
