"""The layers of generation settings, resolved into one GenerationConfig for every front end.

Layers, lowest first; a later layer wins for each key it sets (None or "" means "not set"):

1. the seeds' defaults (`GenerationConfig()`: temperature 0.35, top_p 0.85, repetition 1.2, 200 tokens),
2. the model's own `generation_config.json` (`LoadedModel.generation_defaults`),
3. its catalog entry (when the entry carries generation defaults),
4. the user's saved per-model settings (`firefly use MODEL --temperature …`, the app's model settings),
5. the chat's settings (the app's per-conversation dialog, stored with the chat),
6. explicit overrides (command-line flags, an API request).

Temperature 0 means greedy at every layer; a layer that sets a temperature above 0 without saying
`do_sample` turns sampling back on (a user who picks a temperature wants it used), `do_sample`
set at a layer wins over the temperature of lower layers. Values from files and dialogs are
untrusted: each is checked once here, by its field's declared rule (`setting_spec.check_setting`,
the same rule that guards the saved settings file, so temperature 1e-300 is refused from a file,
a flag or an API request alike), and a bad one raises a ConfigError naming the layer.

It lives with the saved settings it reads (models/, next to `user_settings.py`): generation/ is
the decode path and never reads the user's files. Torch-free, so the UI can import it.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

from ..errors import ConfigError
from ..generation.config import GENERATION_KEYS, GenerationConfig
from ..setting_spec import check_setting, setting_fields

__all__ = ["GENERATION_KEYS", "generation_config_for", "resolve_generation_config"]
# Everything a layer may set (seed, stop strings and do_sample too).
_ALL_KEYS = {f.name: f for f in fields(GenerationConfig)}
_DECLARED = {f.name: (spec, kind) for f, spec, kind in setting_fields(GenerationConfig)}
_LAYERS = ("the model's generation_config.json", "the catalog entry", "the saved model settings",
           "the chat's settings", "the overrides")


def _check(layer: str, key: str, value: Any) -> Any:
    """One value from `layer`, type-checked and normalised (ints stay ints, floats finite)."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"{layer}: {key} = {value!r} {why}", "fix or clear that setting")

    if key in _DECLARED:
        spec, kind = _DECLARED[key]
        return check_setting(key, spec, kind, value, layer)
    if key == "do_sample":
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return value
    if key == "seed":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("is not a whole number")
        return value
    if key == "stop_strings":
        if isinstance(value, str) or not all(isinstance(s, str) and s for s in value):
            raise bad("must be a list of non-empty strings")
        return tuple(value)
    if key == "stop_token_ids":
        if isinstance(value, (str, bytes)) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
            raise bad("must be a list of token ids")
        return tuple(value)
    return value


def _layer_values(layer: str, values: Mapping[str, Any] | None, *, strict: bool) -> dict[str, Any]:
    """The settings one layer gives: known keys only (model files and chat dicts carry others),
    or every key when `strict` (explicit overrides: a typo there is an error)."""
    if not values:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{layer} is not a table of settings")
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in _ALL_KEYS:
            if strict:
                raise ConfigError(f"unknown generation setting {key!r}", f"use one of: {', '.join(GENERATION_KEYS)}")
            continue
        if value is None or value == "":
            continue
        out[key] = _check(layer, key, value)
    return out


def _catalog_defaults(model_id: str) -> Mapping[str, Any] | None:
    from .catalog import find_entry

    entry = find_entry(model_id)
    return getattr(entry, "generation_defaults", None) if entry is not None else None


def _saved_defaults(model_id: str) -> Mapping[str, Any]:
    from .user_settings import load_settings

    return load_settings().for_model(model_id).generation_overrides()


def resolve_generation_config(
    model_id: str,
    *,
    model_defaults: Mapping[str, Any] | None = None,
    chat: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    saved: Mapping[str, Any] | None = None,
) -> GenerationConfig:
    """The GenerationConfig for `model_id` (the id or folder as the user gave it): see the module
    docstring for the layers. `saved` replaces the user's saved settings (read from the config file
    when None), for callers that already hold them."""
    layers = (
        model_defaults,
        _catalog_defaults(model_id),
        _saved_defaults(model_id) if saved is None else saved,
        chat,
        overrides,
    )
    merged: dict[str, Any] = {}
    for name, values in zip(_LAYERS, layers):
        got = _layer_values(name, values, strict=values is overrides)
        if "temperature" in got and "do_sample" not in got:
            # Temperature 0 is greedy; a temperature above 0 chosen at this layer means "sample".
            got["do_sample"] = got["temperature"] > 0
        merged.update(got)
    try:
        return GenerationConfig(**merged)
    except ConfigError as e:
        raise ConfigError(e.message, e.hint or "fix the setting named above") from None
    except TypeError as e:  # a field of the wrong shape that _check does not know
        raise ConfigError(f"bad generation setting: {e}") from None


def generation_config_for(
    lm: Any,
    model_id: str | None = None,
    *,
    chat: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> GenerationConfig:
    """`resolve_generation_config` for a LoadedModel (its generation_config.json is the model layer)."""
    return resolve_generation_config(
        model_id or lm.name,
        model_defaults=getattr(lm, "generation_defaults", None),
        chat=chat,
        overrides=overrides,
    )
