"""Entry point of each process of a multi-process run: `python -m firefly_core.training.worker RUN_DIR`."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    import argparse

    from ..errors import FireflyError
    from .config import load_saved
    from .loop import run_training

    parser = argparse.ArgumentParser(prog="firefly-train-worker")
    parser.add_argument("run_dir")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    try:
        run_training(load_saved(args.run_dir), resume=args.resume)
    except FireflyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
