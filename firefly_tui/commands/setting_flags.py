"""Command-line flags derived from the declared settings (firefly_core/setting_spec.py).

`firefly chat`, `firefly use` and `firefly serve` take the engine and generation settings as
flags; none of them types a flag, a choice list or a range: each flag is made here from its
field's `Setting` (help, choices, flag name), and its value is checked by the same rule that
guards the saved settings, while the command line is parsed. So `--threads 100000` or
`--temperature 1e-300` stop with argparse's usual message and exit status 2, before anything
is saved or loaded. Torch-free: the declarations are plain dataclasses.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING
from typing import Any, Callable

from firefly_core.setting_spec import Setting, check_setting, setting_fields


_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _value_type(name: str, spec: Setting, kind: type, flag: str) -> Callable[[str], Any]:
    """argparse `type=` for one setting: parse the text, then apply the setting's rule."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        try:
            return check_setting(name, spec, kind, value)
        except Exception as e:  # core's ConfigError: its message and hint are the user's answer
            hint = getattr(e, "hint", None)
            raise argparse.ArgumentTypeError(f"{getattr(e, 'message', e)}" + (f"; {hint}" if hint else "")) from None

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


def add_setting_flags(
    parser: argparse.ArgumentParser,
    declared_in: type,
    names: tuple[str, ...] | None = None,
    *,
    show_defaults: bool = False,
    help_for: dict[str, str] | None = None,
) -> None:
    """One flag per declared setting of dataclass `declared_in` (only `names`, when given).

    Every flag's default is None ("not given": the saved setting or the automatic choice wins);
    true/false settings get `--x`/`--no-x`. `show_defaults` appends the field's own default to
    the help (for GenerationConfig, whose defaults are real values); `help_for` replaces a help
    text where a command means something more specific (`firefly use` saves the value)."""
    for f, spec, kind in setting_fields(declared_in, names):
        flag = spec.flag_name(f.name)
        text = (help_for or {}).get(f.name, spec.help)
        if show_defaults and f.default is not MISSING and f.default is not None:
            text += f" (default {f.default})"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif spec.choices is not None:
            parser.add_argument(flag, dest=f.name, choices=spec.choices, default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, type=_value_type(f.name, spec, kind, flag), default=None,
                                metavar=_METAVARS[kind], help=text)


def setting_values(args: argparse.Namespace, declared_in: type, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The settings the command line gave (flags left out are not in the dict)."""
    out = {}
    for f, _spec, _kind in setting_fields(declared_in, names):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = value
    return out
