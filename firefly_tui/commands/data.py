"""`firefly data check FILE...`: validate training data and show what would be trained;
`firefly data sample [--copy DIR]`: the sample data shipped inside the package."""

from __future__ import annotations

import argparse
import sys

OPEN, CLOSE = "⟦", "⟧"  # marks trained tokens in the rendered example
SAMPLE_CHARS = 2000  # the rendered example is cut here: a 10 MB sample must not flood the terminal


def _bad_lines(bad: list[str], show: int) -> list[str]:
    """The report's "bad lines" block (every kind of data check): the first `show`, then a count."""
    if not bad:
        return []
    more = [f"  ... and {len(bad) - show} more"] if len(bad) > show else []
    return ["bad lines:", *(f"  {b}" for b in bad[:show]), *more]


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="inspect training data", description="Inspect training data.")
    sub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    c = sub.add_parser(
        "check",
        help="validate JSONL files (instructions or preference pairs): formats, bad lines, token lengths, a rendered sample",
        description="Validate JSONL training files (Firefly {kind,input,target}, multi-turn "
        "{conversation:[{human,assistant}]}, or OpenAI {messages:[{role,content}]}) or preference pairs for "
        "--method dpo ({prompt,chosen,rejected}), or raw text for --method pretrain (.txt, JSONL {text}). "
        "With --model, "
        "also token lengths and one sample rendered with the model's prompt format, trained "
        f"tokens shown between {OPEN} and {CLOSE}.",
    )
    c.add_argument("files", nargs="+", metavar="FILE")
    c.add_argument("--model", help="model folder or hub id whose tokenizer and prompt format to use")
    c.add_argument("--format", dest="prompt_format", help="prompt format (default: the model's own)")
    c.add_argument("--max-length", type=_positive, default=512, help="max tokens per sample (default 512)")
    c.add_argument("--show", type=_not_negative, default=20, help="bad lines to list (default 20)")
    c.add_argument("--strict", action="store_true", help="exit with status 1 when any line is bad")
    c.set_defaults(handler=run_check)
    s = sub.add_parser(
        "sample",
        help="print the paths of the sample data shipped with firefly (or copy it with --copy DIR)",
        description="Print the paths of the sample training files shipped inside firefly (instructions, "
        "conversations, OpenAI messages, preference pairs): an offline demo for `firefly data check` and "
        "`firefly train`. --copy DIR copies them into DIR (existing files are left alone).",
    )
    s.add_argument("--copy", metavar="DIR", help="copy the files into DIR (made if missing)")
    s.set_defaults(handler=run_sample)


def _whole_number(minimum: int):
    """An argparse type: a whole number of at least `minimum`, refused with the reason otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


_positive = _whole_number(1)
_not_negative = _whole_number(0)


def _cut(pieces: list[tuple[str, bool]], limit: int) -> tuple[str, int]:
    """The marked-up example, at most about `limit` characters of text, and how many were left out."""
    out, used, total = [], 0, sum(len(t) for t, _ in pieces)
    for text, trained in pieces:
        room = limit - used
        if room <= 0:
            break
        part = text[:room]
        used += len(part)
        out.append(f"{OPEN}{part}{CLOSE}" if trained else part)
    return "".join(out), total - used


def format_report(report, show: int = 20) -> str:
    """The plain-text report of `firefly data check` (also used by tests)."""
    lines = [f"files: {', '.join(report.files)}"]
    lines.append(f"lines: {report.lines}   valid: {report.valid}   bad: {len(report.bad)}")
    if report.by_format:
        lines.append("formats: " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_format.items())))
    if report.by_kind:
        kinds = list(report.by_kind.items())
        shown = ", ".join(f"{k} {v}" for k, v in kinds[:15])
        lines.append("kinds: " + shown + (f", ... ({len(kinds) - 15} more)" if len(kinds) > 15 else ""))
    lines.extend(_bad_lines(report.bad, show))
    t = report.tokens
    if t is not None:
        lines.append(
            f"tokens (max length {report.max_length}): samples {len(t.lengths)}, "
            f"supervised tokens {t.supervised_tokens}, truncated {t.truncated}, "
            f"dropped (answer cut away entirely) {t.cut_away}"
        )
        if t.cut_away:
            lines.append(
                f"  warning: {t.cut_away} sample(s) have no trained token within {report.max_length} tokens "
                f"and are skipped in training (first: {', '.join(t.cut_away_where)})"
            )
        if report.histogram:
            peak = max(c for _, _, c in report.histogram) or 1
            lines.append("length histogram:")
            for low, high, count in report.histogram:
                bar = "#" * max(1 if count else 0, round(30 * count / peak))
                lines.append(f"  {low:>5}-{high:<5} {count:>7}  {bar}")
    if report.example:
        s = report.samples[0]
        lines.append(f"sample {s.path}:{s.line} as trained ({OPEN}trained{CLOSE}):")
        text, left_out = _cut(report.example, SAMPLE_CHARS)
        lines.append(text + (f" … ({left_out:,} more characters not shown)" if left_out else ""))
    return "\n".join(lines)


DIFF_OPEN, DIFF_CLOSE = "«", "»"  # marks the tokens where a pair's chosen and rejected answers differ


def _marked_pair_side(pieces: list[tuple[str, bool, bool]], limit: int) -> str:
    """One side of a pair: trained tokens between ⟦⟧, tokens differing from the other side between «»."""
    out, used, trained_open = [], 0, False
    for text, trained, differs in pieces:
        if used >= limit:
            break
        part = text[: limit - used]
        used += len(part)
        if trained and not trained_open:
            out.append(OPEN)
        elif not trained and trained_open:
            out.append(CLOSE)
        trained_open = trained
        out.append(f"{DIFF_OPEN}{part}{DIFF_CLOSE}" if differs else part)
    if trained_open:
        out.append(CLOSE)
    left = sum(len(t) for t, _, _ in pieces) - used
    return "".join(out) + (f" … ({left:,} more characters not shown)" if left > 0 else "")


def format_pair_report(report, show: int = 20) -> str:
    """The plain-text report of `firefly data check` on preference pairs (also used by tests)."""
    lines = [f"files: {', '.join(report.files)}"]
    lines.append(f"preference pairs: lines {report.lines}   valid: {report.valid}   bad: {len(report.bad)}   "
                 f"prompts differ between chosen and rejected: {report.prompts_differ}")
    if report.by_format:
        lines.append("formats: " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_format.items())))
    lines.extend(_bad_lines(report.bad, show))
    t = report.tokens
    if t is not None:
        lines.append(f"tokens (max length {report.max_length}): pairs {len(t.lengths)}, answer tokens "
                     f"{t.supervised_tokens}, truncated {t.truncated}, skipped (an answer cut away entirely) {t.cut_away}")
        if t.cut_away:
            lines.append(f"  warning: {t.cut_away} pair(s) have an answer entirely beyond {report.max_length} tokens "
                         f"and are skipped in training (first: {', '.join(t.cut_away_where)})")
    if report.example:
        p = report.pairs[0]
        lines.append(f"pair {p.path}:{p.line} as trained ({OPEN}trained{CLOSE}, {DIFF_OPEN}differs{DIFF_CLOSE}):")
        for side in ("chosen", "rejected"):
            lines.append(f"{side}: " + _marked_pair_side(report.example[side], SAMPLE_CHARS // 2))
    return "\n".join(lines)


def format_document_report(report, show: int = 20) -> str:
    """The plain-text report of `firefly data check` on raw text for --method pretrain."""
    lines = [f"files: {', '.join(report.files)}",
             f"raw text (--method pretrain): documents {len(report.documents)}   bad lines: {len(report.bad)}"]
    lines.extend(_bad_lines(report.bad, show))
    t = report.tokens
    if t is not None:
        longer = sum(1 for n in t.lengths if n > report.max_length)
        lines.append(f"tokens (max length {report.max_length}): {t.tokens} trained, {longer} document(s) longer "
                     f"than {report.max_length} cut into pieces ({t.pieces} pieces in all)")
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> int:
    from firefly_core.data import check_files
    from firefly_core.preferences import check_pairs, looks_like_pairs

    tokenizer = fmt = None
    if args.model:
        from firefly_core.formats import resolve_format
        from firefly_core.models.loading import load_tokenizer
        from firefly_core.models.inventory import resolve_model_path

        tokenizer = load_tokenizer(resolve_model_path(args.model))
        fmt = resolve_format(tokenizer, args.prompt_format)
    from firefly_core.documents import check_documents, looks_like_text

    if looks_like_text(args.files):
        report = check_documents(args.files, tokenizer=tokenizer, max_length=args.max_length)
        print(format_document_report(report, args.show))
    elif looks_like_pairs(args.files):
        report = check_pairs(args.files, tokenizer=tokenizer, prompt_format=fmt, max_length=args.max_length)
        print(format_pair_report(report, args.show))
    else:
        report = check_files(args.files, tokenizer=tokenizer, prompt_format=fmt, max_length=args.max_length)
        print(format_report(report, args.show))
    trainable, unit = trainable_count(report)
    print(verdict_line(trainable, unit, len(report.bad), getattr(report, "valid", trainable), getattr(report, "max_length", None)))
    if trainable == 0:
        return 1
    if args.strict and report.bad:
        print(f"error: {len(report.bad)} bad line(s) (--strict)", file=sys.stderr)
        return 1
    return 0


def trainable_count(report) -> tuple[int, str]:
    """How many samples (pairs, documents) training would use: valid ones, less those whose trained
    part is cut away by --max-length (known when a --model gives the tokenizer)."""
    if hasattr(report, "documents"):
        return len(report.documents), "documents"
    tokens = getattr(report, "tokens", None)
    cut = getattr(tokens, "cut_away", 0) if tokens is not None else 0
    unit = "pairs" if hasattr(report, "pairs") else "samples"
    return max(0, report.valid - cut), unit


def verdict_line(trainable: int, unit: str, bad: int, valid: int = 0, max_length: int | None = None) -> str:
    """The last line of `firefly data check`: can this be trained on?"""
    if trainable == 0 and valid:
        return (f"verdict: nothing to train on: every one of the {valid} {unit} has its trained part cut away "
                f"by the max length ({max_length} tokens)")
    if trainable == 0:
        return f"verdict: nothing to train on: no valid {unit}" + (f" ({bad} bad line(s) above)" if bad else "")
    return f"verdict: ready: {trainable} {unit} to train on" + (f"; {bad} bad line(s) will be skipped" if bad else "")


def run_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firefly_core.samples import sample_files

    files = sample_files()
    if not args.copy:
        width = max(len(kind) for kind in files)
        for kind, path in files.items():
            print(f"{kind:<{width}}  {path}")
        return 0
    from firefly_core import atomic
    from firefly_core.errors import StorageError

    target = Path(args.copy).expanduser()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError.from_os_error(e, target, "create") from None
    for kind, path in files.items():
        dest = target / path.name
        if dest.exists():
            print(f"kept     {dest} (already there)")
            continue
        try:
            atomic.write_bytes(dest, path.read_bytes())
        except OSError as e:
            raise StorageError.from_os_error(e, dest) from None
        print(f"copied   {dest}")
    return 0
