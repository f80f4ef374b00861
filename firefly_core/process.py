"""Whether another process still runs: the one rule behind stale locks and stale temporary folders."""

from __future__ import annotations

import os


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` still runs (a finished child of ours is reaped, not counted)."""
    if not pid or pid < 0:
        return False
    try:
        os.waitpid(pid, os.WNOHANG)
    except (OSError, ChildProcessError):  # not our child, or already reaped
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True
