"""`firefly prune`: cut a model's vocabulary to the tokens a corpus uses (exact, in little memory)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "prune",
        help="make a model smaller by keeping only the tokens your corpus uses",
        description="Prune the vocabulary of a byte-level BPE model (BLOOM, Qwen2, Llama 3 style): "
        "count tokens in a corpus, keep the frequent ones (plus special tokens, the 256 byte tokens "
        "and every token on their merge paths), and write a new model folder with a rebuilt "
        "tokenizer, sliced weights, token_map.json and prune_report.json.",
    )
    p.add_argument("model", help="model folder or downloaded hub id")
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE", help="text or JSONL files (JSONL: string fields)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the pruned model")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--keep-top", type=int, metavar="N", help="at most N tokens in the new vocabulary")
    keep.add_argument("--min-count", type=int, metavar="C", help="keep tokens seen at least C times (default 1)")
    p.add_argument("--keep-file", metavar="TOKENS.txt", help="tokens (or texts) to keep always, one per line")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p.set_defaults(handler=run)


class _Progress:
    """One status line on stderr, rewritten in place when stderr is a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last_stage = ""

    def __call__(self, p) -> None:
        if p.stage == "done":
            if self.tty:
                print(file=sys.stderr)
            return
        if not self.tty:
            if p.stage != self.last_stage:
                print({"count": "counting corpus tokens...", "weights": "writing weights..."}[p.stage], file=sys.stderr)
                self.last_stage = p.stage
            return
        unit = f"{p.done / 1e6:.1f}/{p.total / 1e6:.1f} MB" if p.stage == "count" else f"{p.done}/{p.total} tensors"
        print(f"\r{p.stage:<8} {unit:<30}", end="", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from firefly_core.pruning import REPORT_FILE, prune_vocabulary

    report = prune_vocabulary(
        args.model,
        args.corpus,
        args.out,
        keep_top=args.keep_top,
        min_count=args.min_count,
        keep_file=args.keep_file,
        force=args.force,
        progress=_Progress(),
    )
    print(report.summary())
    print(f"  report      {report.out}/{REPORT_FILE}")
    return 0
