"""How sizes are written for people: one formatter for the CLI and the app.

Decimal units (1 MB = 1,000,000 bytes), as the Hugging Face Hub, disk makers and `df -H` write
them, so a size here matches the size on the model's hub page.
"""

from __future__ import annotations


def human_bytes(n: float | None) -> str:
    """`1.3 MB`, `512 B`, `?` for an unknown size."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
