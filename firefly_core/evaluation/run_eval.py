"""Evaluating what a training run made: its base model against its final model (or its newest
checkpoint), with compare's checks and, given an exam, `eval`'s scores; saved in the run folder so
whoever opens the run again (the app, a script) sees them.

The file is `evaluation.json` in the run folder (`training.run_dir.EVAL_FILE`), written atomically:

    {"base": MODEL, "made": PATH, "made_label": "final" | "step N", "finished": unix time,
     "checks": {"base": {...}, "made": {...}}, "next_token_agreement": fraction | null,
     "eval": null | {"benchmark", "data", "accuracy": {"base", "made"}, "stderr": {...}, "json": {...}}}

`checks` are `compare.ModelReplies.checks()` (stops, empty, repetition, looping); `eval.json` is the
document `firefly eval --json` writes for the two models.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import FireflyError


@dataclass(frozen=True)
class RunEvalProgress:
    """Where an evaluation of a run is: a step ("replies base", "exam final", …) and the units
    done of all it will do."""

    step: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def eval_file(run_dir: Path) -> Path:
    from ..training.run_dir import EVAL_FILE

    return Path(run_dir) / EVAL_FILE


def models_of_run(run_dir: Path) -> tuple[str, str, Path]:
    """(base model, label of what the run made, its folder): the run's --model, and its final
    model, else its newest checkpoint as a model folder (made once under the run; loads torch)."""
    from ..training.config import load_saved
    from ..training.run import Run

    run = Run(Path(run_dir))
    base = load_saved(run.path).model
    made = run.models()
    if not made:
        raise FireflyError(f"{run.name} has no final model or checkpoint yet", "evaluate it after it saved one")
    label, path = made[0]
    if label != "final":
        path = run.checkpoint_model(path)
    return base, label, Path(path)


def evaluate_run(
    run_dir: Path,
    *,
    exam: Path | str | None = None,
    benchmark: str = "ceval",
    shots: int = 5,
    limit: int | None = None,
    prompts: int = 8,
    max_new_tokens: int = 64,
    progress: Callable[[RunEvalProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Compare the run's base and its final model on `prompts` shipped prompts (greedy, so a rerun
    agrees), and score both on `exam` when one is given; save and return the document."""
    from ..atomic import write_json
    from ..models.service import model_service
    from .benchmarks import DEFAULT_SPLIT, load_exam
    from .compare import ModelReplies, generate_replies, load_prompts, next_token_agreement, reply_config
    from .report import breakdown, to_json
    from .runner import evaluate_model

    base, label, made = models_of_run(run_dir)
    texts = load_prompts()[:prompts]
    exams = load_exam(benchmark, exam, limit=limit) if exam else []
    questions = sum(len(e.items) for e in exams)
    total = 2 * len(texts) + 2 * questions
    done = 0

    def say(step: str, n: int = 0) -> None:
        if progress is not None:
            progress(RunEvalProgress(step, done + n, total))

    service = model_service()
    config = reply_config(max_new_tokens=max_new_tokens)
    runs: dict[str, ModelReplies] = {}
    lms = {}
    for key, model in (("base", base), ("made", str(made))):
        say(f"loading {key}")
        lm = service.get(service.request_for(model), cancel=cancel)
        lms[key] = lm
        with service.generation_lock(lm):
            replies = generate_replies(lm, texts, config, cancel=cancel, progress=lambda d, _t, k=key: say(f"replies {k}", d))
        runs[key] = ModelReplies(model, key, replies)
        done += len(texts)
    try:
        same, n = next_token_agreement(lms["base"], lms["made"], [r.prompt + r.text for r in runs["made"].replies])
        agreement = same / n if n else None
    except FireflyError:  # a pruned vocabulary: not two builds of one model
        agreement = None
    doc: dict[str, Any] = {
        "base": base, "made": str(made), "made_label": label,
        "checks": {k: r.checks() for k, r in runs.items()},
        "next_token_agreement": agreement, "eval": None,
    }
    if exams:
        results = []
        for key, model in (("base", base), ("made", str(made))):
            base_done = done
            result = evaluate_model(
                model, exams, shots=shots, split=DEFAULT_SPLIT[benchmark], cancel=cancel,
                progress=lambda p, k=key, b=base_done: progress and progress(RunEvalProgress(f"exam {k}", b + p.done, total)),
            )
            results.append(result)
            done += questions
        scores = [breakdown(r)["overall"]["all"] for r in results]
        doc["eval"] = {
            "benchmark": benchmark, "data": str(exam),
            "accuracy": {"base": scores[0].accuracy, "made": scores[1].accuracy},
            "stderr": {"base": scores[0].stderr, "made": scores[1].stderr},
            "json": to_json(results),
        }
    doc["finished"] = time.time()
    write_json(eval_file(run_dir), doc)
    say("done")
    return doc


def load_evaluation(run_dir: Path) -> dict[str, Any] | None:
    """The saved evaluation of a run, or None (none yet, or a file that is not ours: ignored)."""
    from ..jsonfile import read_json

    try:
        doc = read_json(eval_file(run_dir), what="the run's evaluation", max_bytes=64 * 1024 * 1024)
    except (FileNotFoundError, FireflyError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("checks"), dict) else None


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """A few lines for a panel: per model the checks, the agreement, the exam's accuracy."""
    lines = []
    label = doc.get("made_label", "final")
    for key, name in (("base", "base"), ("made", str(label))):
        c = doc.get("checks", {}).get(key) or {}
        n = c.get("replies", 0)
        try:
            lines.append(
                f"{name:>8}: {c.get('stopped', 0)}/{n} replies stop, {c.get('empty', 0)} empty, "
                f"repetition {float(c.get('repetition', 0)):.2f}"
            )
        except (TypeError, ValueError):
            continue
    agreement = doc.get("next_token_agreement")
    if isinstance(agreement, (int, float)):
        lines.append(f"next-token agreement base/{label}: {agreement:.0%}")
    ev = doc.get("eval")
    if isinstance(ev, dict) and isinstance(ev.get("accuracy"), dict):
        acc, se = ev["accuracy"], ev.get("stderr") or {}
        parts = []
        for key, name in (("base", "base"), ("made", str(label))):
            a, s = acc.get(key), se.get(key)
            if isinstance(a, (int, float)):
                parts.append(f"{name} {a:.1%}" + (f" ± {s:.1%}" if isinstance(s, (int, float)) and s == s else ""))
        lines.append(f"{ev.get('benchmark', 'exam')}: " + ", ".join(parts))
    return lines
