"""The models a chat can pick (the chat settings dialog's list): an app-only view of the inventory."""

from __future__ import annotations


def model_choices(active: str | None, current: str | None = None) -> list[str]:
    """Complete installed models and local folders, then the active model and the chat's own choice
    when they are not among them (a folder used once, a removed model). Scans the hub cache: call
    from a worker."""
    from firefly_core.models.inventory import list_installed

    out = [str(m.id) for m in list_installed() if m.complete]
    for extra in (active, current):
        if extra and extra not in out:
            out.append(extra)
    return out
