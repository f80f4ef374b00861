"""`firefly runs` (the training runs and their state) and `firefly runs stop RUN` (stop one with a
checkpoint), read through core's `Run`: the same status, step and rules as the app's Train screen."""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "runs",
        help="list training runs (status, step, loss) or stop one with a checkpoint",
        description="List the training runs in a folder (default: the app's runs folder) with their state, "
        "step and last loss, as the Train screen shows them; `firefly runs stop RUN` stops a run the way "
        "Ctrl-C does: it saves a checkpoint, and `firefly train --resume --out RUN` continues it.",
    )
    p.add_argument("--dir", help="folder holding run folders (default: the app's runs folder)")
    p.set_defaults(handler=run_list)
    sub = p.add_subparsers(dest="runs_command", metavar="SUBCOMMAND")
    s = sub.add_parser("stop", help="stop a run: it saves a checkpoint first (continue with --resume)",
                       description="Send the run's process SIGINT, as Ctrl-C does: it saves a checkpoint and "
                       "stops. Waits until the run says it stopped.")
    s.add_argument("run", metavar="RUN", help="the run folder (or its name in `firefly runs --dir DIR`)")
    s.add_argument("--no-wait", action="store_true", help="return once the signal is sent")
    s.set_defaults(handler=run_stop)


def _parent(args: argparse.Namespace):
    from pathlib import Path

    from firefly_core.paths import runs_dir

    return Path(args.dir).expanduser() if args.dir else runs_dir()


def format_runs(runs) -> str:
    """The runs as a table (also used by tests)."""
    if not runs:
        return "no training runs"
    rows = [("RUN", "STATUS", "STEP", "LOSS", "STARTED")]
    for run in runs:
        s = run.summary()
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.started)) if s.started else "-"
        loss = "-" if s.last_loss is None else f"{s.last_loss:.4f}"
        rows.append((run.name, s.status, f"{s.step}/{s.total or '?'}", loss, started))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for run in runs:  # why a run failed, under the table
        if run.status == "error" and run.state.detail:
            lines.append(f"{run.name}: {run.state.detail}")
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    from firefly_core.training.run import list_runs

    print(format_runs(list_runs(_parent(args))))
    return 0


def run_stop(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firefly_core.errors import ConfigError
    from firefly_core.training.events import EVENTS_FILE
    from firefly_core.training.run import open_run

    path = Path(args.run).expanduser()
    if not (path / EVENTS_FILE).is_file() and (_parent(args) / args.run / EVENTS_FILE).is_file():
        path = _parent(args) / args.run
    if not (path / EVENTS_FILE).is_file():
        raise ConfigError(f"no training run at {path}", "give a run folder (see: firefly runs)")
    run = open_run(path)
    if not run.stop():
        raise ConfigError(f"{run.name} is not running (it is {run.status})", "see: firefly runs")
    print(f"asked {run.name} to stop; it saves a checkpoint first", file=sys.stderr)
    if args.no_wait:
        return 0
    while run.status in ("running", "waiting"):
        time.sleep(0.5)
        run.refresh()
    print(f"{run.name}: {run.status} at step {run.step}" + (f" ({run.state.detail})" if run.state.detail else ""))
    return 0 if run.status in ("stopped", "done") else 1
