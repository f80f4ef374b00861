"""`firefly compare`: the same prompts through several models, replies side by side, with the
checks that catch a broken fine-tune or export (replies that never stop, loops, empty replies),
next-token agreement between builds of one model, and perplexity on a held-out text."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="replies of several models side by side, with checks (stops, repeats, empty, agreement)",
        description="Answer the same prompts with each model (greedy by default, so reruns agree) and show "
        "the replies side by side, then per model: how many replies stop by themselves, how many are "
        "empty, a repetition score (share of repeated 4-token sequences), and for builds of the same "
        "model their next-token agreement. Example: firefly compare Qwen/Qwen2.5-0.5B-Instruct "
        "runs/my-sft/final --text heldout.txt; one model on both engines: firefly compare MODEL "
        "--engine torch,llamacpp",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="model folders or downloaded hub ids")
    p.add_argument("--prompts", metavar="FILE", help='prompts: a .jsonl ({"prompt": "..."} a line) or a text '
                   "file, one a line (default: 30 Chinese prompts shipped with firefly)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N prompts")
    p.add_argument("--text", metavar="FILE", help="held-out text: perplexity of each model, and the text "
                   "on which next-token agreement is measured")
    p.add_argument("--engine", default="torch", metavar="ENGINE[,ENGINE]",
                   help="torch, llamacpp, or both (each model once per engine); default torch")
    p.add_argument("--quantize", help="llama.cpp weight type (bf16, f16, q8_0, q4_k_m) or int8 for torch")
    p.add_argument("--dtype", help="bf16, fp16 or fp32 (default: as firefly chat picks it)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="longest reply in tokens (default 200)")
    p.add_argument("--sample", action="store_true", help="sample (the chat's settings) instead of greedy")
    p.add_argument("--seed", type=int, help="random seed for --sample")
    p.add_argument("--json", metavar="FILE", help="write the replies and checks to FILE")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firefly_core.errors import ConfigError, FireflyError
    from firefly_core.evaluation.compare import ModelReplies, generate_replies, load_prompts, next_token_agreement, perplexity, reply_config
    from firefly_core.models.service import model_service

    from .eval import _engines

    if args.max_new_tokens < 1:
        raise ConfigError("--max-new-tokens must be 1 or more")
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be 1 or more")
    engines = _engines(args.engine)
    prompts = load_prompts(args.prompts)[: args.limit]
    heldout = None
    if args.text:
        text_path = Path(args.text).expanduser()
        try:
            heldout = text_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise FireflyError(f"cannot read {text_path} as UTF-8 text: {e}") from None
    config = reply_config(greedy=not args.sample, seed=args.seed, max_new_tokens=args.max_new_tokens)
    tty = sys.stderr.isatty()
    service = model_service()
    runs: list[ModelReplies] = []
    loaded = []
    builds = [(m, e) for m in args.models for e in engines]
    for k, (model, engine) in enumerate(builds, 1):
        tag = f"[{k}/{len(builds)}] {model}"

        def say(message: str, tag=tag) -> None:
            print(("\r\033[K" if tty else "") + f"{tag}: {message}", end="" if tty else "\n", file=sys.stderr, flush=True)

        request = service.request_for(model, engine=engine, dtype=args.dtype, device=args.device, quantize=args.quantize)
        lm = service.get(request, status=lambda s: say(s.message))
        from firefly_core.models.service import weights_label

        label = f"[{k}] {lm.name} ({lm.engine} {weights_label(lm)})"
        result = ModelReplies(model, label)
        with service.generation_lock(lm):
            result.replies = generate_replies(lm, prompts, config, progress=lambda d, t: say(f"{d}/{t} replies"))
            if heldout is not None:
                result.perplexity = perplexity(lm, heldout)
        if tty:
            print(file=sys.stderr)
        runs.append(result)
        loaded.append(lm)
    agreements = {}
    texts = [heldout] if heldout is not None else [r.prompt + r.text for r in runs[0].replies]
    for k, lm in enumerate(loaded[1:], 1):
        try:
            agreements[k] = next_token_agreement(loaded[0], lm, texts)
        except FireflyError:
            agreements[k] = None  # different vocabularies: not two builds of one model
    _print(runs, agreements, prompts)
    if args.json:
        from firefly_core.atomic import write_json

        out = Path(args.json).expanduser()
        write_json(out, {
            "prompts": prompts,
            "models": [
                {"model": r.model, "label": r.label, "checks": r.checks(),
                 "next_token_agreement_with_first": (None if k == 0 or agreements.get(k) is None
                                                     else agreements[k][0] / max(agreements[k][1], 1)),
                 "replies": [{"text": x.text, "new_tokens": x.new_tokens, "stop_reason": x.stop_reason,
                              "repetition": x.repetition} for x in r.replies]}
                for k, r in enumerate(runs)
            ],
        })
        print(f"wrote {out}")
    return 0


def _print(runs, agreements, prompts) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    for i, prompt in enumerate(prompts):
        table = Table(title=f"{i + 1}. {escape(prompt)}", title_justify="left", show_lines=False, expand=True)
        for r in runs:
            table.add_column(escape(r.label), overflow="fold", ratio=1)
        cells = []
        for r in runs:
            reply = r.replies[i]
            mark = "" if reply.stopped else " [dim](cut at the limit)[/dim]"
            cells.append((escape(reply.text.strip()) or "[red](empty)[/red]") + mark)
        table.add_row(*cells)
        console.print(table)
    checks = Table(title="checks", title_justify="left", expand=False)
    checks.add_column("")
    for r in runs:
        checks.add_column(escape(r.label), justify="right", overflow="fold")
    rows = [r.checks() for r in runs]
    n = rows[0]["replies"]
    checks.add_row("replies that stop by themselves", *[f"{c['stopped']}/{n}" for c in rows])
    checks.add_row("empty replies", *[f"{c['empty']}/{n}" for c in rows])
    checks.add_row("repetition (0 = none)", *[f"{c['repetition']:.2f}" for c in rows])
    checks.add_row("looping replies (≥ 0.5)", *[f"{c['looping']}/{n}" for c in rows])
    if any(c["perplexity"] is not None for c in rows):
        checks.add_row("perplexity on --text", *[f"{c['perplexity']:.2f}" if c["perplexity"] else "-" for c in rows])
    if len(runs) > 1:
        cells = ["-"]
        for k in range(1, len(runs)):
            a = agreements.get(k)
            cells.append("other vocabulary" if a is None else f"{a[0] / max(a[1], 1):.1%} of {a[1]}")
        checks.add_row("next-token agreement with [1]", *cells)
    console.print(checks)
