"""How a setting a user chooses is declared, and its one range rule.

A dataclass field carries a `Setting` in its metadata (`field(default=..., metadata=setting(...))`):
its help text, its choices or range, its command-line flag. Everything a front end shows or
accepts is derived from that one declaration: the saved settings file (`models/user_settings.py`),
the model service's request, the flags of `firefly chat`/`use`/`serve`, and the app's dialogs.
`check_setting` is the one rule that accepts or refuses a value, used when a value is saved, when
a file someone edited is read back, when a flag is parsed and when an API request arrives, so a
value that would crash a later run (`threads` 100000, `temperature` 1e-300) is refused up front.

A leaf: it imports only errors, so `generation/config.py` and `models/` can both use it.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import Field, dataclass, field, fields
from typing import Any, Callable

from .errors import ConfigError

__all__ = ["Setting", "setting", "setting_fields", "check_setting", "value_kind", "include_settings"]

@dataclass(frozen=True)
class Setting:
    """What a front end needs to know about one setting (see the module docstring).

    `min`/`max` are inclusive; `above` is an exclusive lower bound (top_p > 0); `zero_ok` allows 0
    below `min` (temperature 0 = greedy); `max` may be a function when it depends on the machine
    (threads). `flag` is the long option, `--name-with-dashes` when not given. The hints say
    what to do instead when a value is below `min` or above `max`."""

    help: str
    choices: tuple[str, ...] | None = None
    min: float | int | None = None
    max: float | int | Callable[[], float | int] | None = None
    above: float | None = None
    zero_ok: bool = False
    flag: str | None = None
    labels: dict[str, str] | None = None  # how a dialog names each choice (the value when absent)
    below_hint: str = ""  # the hint when a value is below `min`
    above_hint: str = ""  # the hint when a value is above `max`

    def flag_name(self, name: str) -> str:
        return self.flag or "--" + name.replace("_", "-")

    def upper(self) -> float | int | None:
        return self.max() if callable(self.max) else self.max


def setting(help: str, **rules: Any) -> dict[str, Setting]:
    """Field metadata declaring a setting: `field(default=0.35, metadata=setting("...", min=...))`."""
    return {"setting": Setting(help, **rules)}


_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def value_kind(annotation: Any) -> type:
    """int, float, bool or str for a field's annotation (`float | None`, "int", Optional[str] …)."""
    if isinstance(annotation, str):
        names = [p.strip() for p in annotation.split("|") if p.strip() != "None"]
        if len(names) == 1 and names[0] in _KINDS:
            return _KINDS[names[0]]
        raise TypeError(f"a setting must be int, float, bool or str (or None), not {annotation!r}")
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return value_kind(args[0])
    if annotation in (int, float, bool, str):
        return annotation
    raise TypeError(f"a setting must be int, float, bool or str (or None), not {annotation!r}")


def setting_fields(cls: Any, names: tuple[str, ...] | None = None) -> list[tuple[Field, Setting, type]]:
    """(field, its Setting, int/float/bool/str) for each declared setting of dataclass `cls`, in
    declaration order; only `names` when given (in that order)."""
    found = {f.name: (f, f.metadata["setting"], value_kind(f.type)) for f in fields(cls) if "setting" in f.metadata}
    if names is None:
        return list(found.values())
    return [found[n] for n in names]


def check_setting(name: str, spec: Setting, kind: type, value: Any, where: str = "") -> Any:
    """`value` if the setting accepts it (ints stay ints, a whole float becomes an int for int
    settings, numbers become floats for float settings); None passes (= not set). Otherwise a
    ConfigError naming `where` (a file, a flag, a dialog), the setting and the rule."""
    if value is None:
        return None
    prefix = f"{where}: " if where else ""

    def bad(why: str, hint: str | None = None) -> ConfigError:
        shown = repr(value if not isinstance(value, str) else value[:200])
        shown = shown if len(shown) <= 80 else shown[:77] + "..."  # a value from outside: cut short
        return ConfigError(f"{prefix}{name} = {shown} {why}", hint or "fix or clear that setting")

    if kind is bool:
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise bad("is not text")
        if spec.choices is not None and value not in spec.choices:
            raise bad("is not one of the choices", f"choose one of: {', '.join(spec.choices)}")
        return value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("is not a whole number")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("is not a number")
        try:
            value = float(value)  # an int of 400 digits (valid JSON) does not fit: OverflowError
        except OverflowError:
            raise bad("is not a number") from None
        if not math.isfinite(value):
            raise bad("is not a number")
    if spec.zero_ok and value == 0:
        return value
    if spec.above is not None and not value > spec.above:
        raise bad(f"must be above {spec.above:g}")
    if spec.min is not None and value < spec.min:
        zero = " (or 0)" if spec.zero_ok else ""
        raise bad(f"is below {spec.min:g}{zero}", spec.below_hint or None)
    top = spec.upper()
    if top is not None and value > top:
        low = spec.min if spec.min is not None else 0
        raise bad(f"is above {top:g}", " ".join(x for x in (spec.above_hint, f"use {low:g} to {top:g}") if x))
    return value


def include_settings(*groups: tuple[Any, ...]) -> Callable[[type], type]:
    """Class decorator (put it under `@dataclass`): adds the declared settings of other dataclasses
    to this one as optional fields (default None = "not chosen"), metadata included, so a class
    such as the saved per-model settings holds every setting without listing them again.
    Each group is `(dataclass, names or None)`."""

    def add(cls: type) -> type:
        annotations = cls.__dict__.get("__annotations__", {})
        cls.__annotations__ = annotations
        for source, names in groups:
            for f, _spec, kind in setting_fields(source, names):
                annotations[f.name] = f"{kind.__name__} | None"
                setattr(cls, f.name, field(default=None, metadata=f.metadata))
        return cls

    return add
