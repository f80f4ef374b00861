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


def _subcommand_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)subcommand's own parser that `argv` reaches (`firefly data check …` → data check's)."""
    current = parser
    for token in argv:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and token in subs[0].choices:
            current = subs[0].choices[token]
    return current


def _refuse_unknown(parser: argparse.ArgumentParser, argv: list[str], unknown: list[str]) -> None:
    """A typo in a subcommand's flag: that subcommand's usage and a "did you mean" (exit status 2),
    not the top-level usage."""
    import difflib

    target = _subcommand_parser(parser, argv)
    known = [o for a in target._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for arg in unknown:
        flag = arg.split("=", 1)[0]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6) if flag.startswith("-") else []
        if close:
            hints.append(f"did you mean {close[0]} (not {flag})?")
    target.error(f"unrecognized arguments: {' '.join(unknown)}" + (f"; {' '.join(hints)}" if hints else ""))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _refuse_unknown(parser, argv, unknown)
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
