"""Key-binding descriptions that follow the interface language.

Classes declare `Binding(key, action, "i18n.key")`; `localize_bindings(node)` swaps the key for
the text in the current language on that node's own binding map, remembering the key so a later
language switch can translate again.
"""

from __future__ import annotations

import dataclasses

from ..i18n import STRINGS, t


def localize_bindings(node) -> None:
    keys: dict[tuple[str, str], str] = node.__dict__.setdefault("_i18n_binding_keys", {})
    bindings_map = node._bindings.key_to_bindings
    for key, bindings in bindings_map.items():
        new = []
        for b in bindings:
            ident = (key, b.action)
            i18n_key = keys.get(ident) or (b.description if b.description in STRINGS else None)
            if i18n_key:
                keys[ident] = i18n_key
                b = dataclasses.replace(b, description=t(i18n_key))
            new.append(b)
        bindings_map[key] = new
