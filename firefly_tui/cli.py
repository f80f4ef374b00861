"""`firefly` and its subcommands. `firefly` alone opens the Textual app.

Each subcommand lives in `firefly_tui.commands.<name>` with `register(subparsers)`; handlers import
firefly_core lazily so `firefly --help` stays instant. `FireflyError`s are printed as a message
and a hint, without a traceback, and exit with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Order is the order shown in --help.
COMMAND_MODULES = ("chat", "models", "serve", "prune", "export", "train", "runs", "data", "eval", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="firefly",
        description="Firefly (流萤) on your machine: get a model, chat, prune, fine-tune. "
        "Run without a command to open the terminal app.",
    )
    parser.add_argument("--version", action="version", version=f"firefly-tui {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"firefly_tui.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"firefly_tui.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def _version() -> str:
    from firefly_core import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        from firefly_tui.app import run_app

        return run_app() or 0
    from firefly_core.errors import FireflyError, format_error

    try:
        return args.handler(args) or 0
    except FireflyError as e:
        print(format_error(e, lines=True), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
