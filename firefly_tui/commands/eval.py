"""`firefly eval`: score models on C-Eval, CMMLU or your own multiple-choice exam, as
lm-evaluation-harness scores them, with several models (base vs fine-tuned, PyTorch vs GGUF) as
columns of one table."""

from __future__ import annotations

import argparse
import sys

BENCHMARKS = ("ceval", "cmmlu", "mc")  # firefly_core.evaluation.benchmarks.BENCHMARKS (not imported: --help stays instant)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="score models on C-Eval, CMMLU or your own multiple-choice exam",
        description="Score one or more models on a multiple-choice exam, exactly as lm-evaluation-harness "
        "scores its ceval-valid and cmmlu tasks (the first N dev questions as examples, the log-likelihood "
        "of each answer letter). Prints accuracy overall and per category with its standard error, one "
        "column per model. Example: firefly eval Qwen/Qwen2.5-0.5B ./my-run/final --benchmark ceval "
        "--data ceval/ceval-exam --subjects high_school_physics,law",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="model folders or downloaded hub ids")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS,
                   help="ceval, cmmlu, or mc (your own JSONL: question, choices, answer, optional subject)")
    p.add_argument("--data", required=True, metavar="DIR_OR_ID",
                   help="the exam: a folder in the benchmark's layout, a .jsonl file (mc), or a dataset "
                   "downloaded with firefly pull --dataset (ceval/ceval-exam, haonan-li/cmmlu)")
    p.add_argument("--split", help="questions to score (default: val for C-Eval, test for CMMLU)")
    p.add_argument("--shots", type=int, default=5, help="worked examples before each question (default 5)")
    p.add_argument("--subjects", help="comma-separated subject keys, e.g. high_school_physics,law (default: all)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N questions of each subject")
    p.add_argument("--dtype", help="bf16, fp16 or fp32 (default: as firefly chat picks it)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--engine", default="torch", metavar="ENGINE[,ENGINE]",
                   help="torch, llamacpp, or both (torch,llamacpp: each model once per engine, with the "
                   "agreement of their answers); default torch")
    p.add_argument("--quantize", help="llama.cpp weight type (bf16, f16, q8_0, q4_k_m) or int8 for torch")
    p.add_argument("--chat-template", action="store_true",
                   help="also score each model 0-shot with the question in its chat format (labelled; "
                   "not a harness protocol)")
    p.add_argument("--by-subject", action="store_true", help="also print one row per subject")
    p.add_argument("--json", metavar="FILE", help="write every answer and score, with the protocol, to FILE")
    p.set_defaults(handler=run)


def _engines(text: str) -> list[str]:
    from firefly_core.errors import ConfigError
    from firefly_core.models.service import ENGINES

    engines = [e.strip() for e in text.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines:
        raise ConfigError(f"unknown engine {bad[0] if bad else text!r}", f"use one of: {', '.join(ENGINES)} (or both, comma-separated)")
    return list(dict.fromkeys(engines))


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firefly_core.errors import FireflyError
    from firefly_core.evaluation.benchmarks import DEFAULT_SPLIT, load_exam
    from firefly_core.evaluation.report import table, write_json
    from firefly_core.evaluation.runner import check_shots, evaluate_model

    engines = _engines(args.engine)
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    split = args.split or DEFAULT_SPLIT[args.benchmark]
    json_path = Path(args.json).expanduser() if args.json else None
    if json_path is not None and json_path.is_dir():
        raise FireflyError(f"{json_path} is a folder", "give a file name for --json, e.g. results.json")
    exams = load_exam(args.benchmark, args.data, split=split, subjects=subjects, limit=args.limit)
    check_shots(exams, args.shots)
    n = sum(len(e.items) for e in exams)
    print(f"{args.benchmark} {split}: {n} questions in {len(exams)} subject{'s' if len(exams) != 1 else ''}, "
          f"{args.shots}-shot", file=sys.stderr)
    runs = [(m, e, False) for m in args.models for e in engines]
    if args.chat_template:
        runs += [(m, e, True) for m in args.models for e in engines]
    tty = sys.stderr.isatty()
    results = []
    for k, (model, engine, chat) in enumerate(runs, 1):
        tag = f"[{k}/{len(runs)}] {model} ({engine}{', chat template' if chat else ''})"

        def progress(p, tag=tag) -> None:
            if tty or p.done == p.total or p.done % 100 == 0:
                eta = "" if p.eta_s is None else f" · ETA {_duration(p.eta_s)}"
                line = f"{tag}: {p.done}/{p.total} questions · {p.subject}{eta}"
                print(("\r\033[K" if tty else "") + line, end="" if tty else "\n", file=sys.stderr, flush=True)

        def status(message: str, tag=tag) -> None:
            print(("\r\033[K" if tty else "") + f"{tag}: {message}", end="" if tty else "\n", file=sys.stderr, flush=True)

        result = evaluate_model(
            model, exams, shots=args.shots, split=split, engine=engine, dtype=args.dtype, device=args.device,
            quantize=args.quantize, chat_template=chat, progress=progress, status=status,
        )
        if tty:
            print(file=sys.stderr)
        results.append(result)
    print(table(results, subjects=args.by_subject))
    if json_path is not None:
        write_json(results, json_path)
        print(f"wrote {json_path}")
    return 0


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
