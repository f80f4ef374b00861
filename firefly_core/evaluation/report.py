"""Turning answers into numbers and tables: accuracy (micro average, as the harness's groups weight
subjects by size), per category, standard error, a warning near chance, and the JSON file.

Standard error is the harness's `mean_stderr` (sample standard deviation / sqrt(n)) over the
questions counted. A score is "within noise of chance" when guessing (1 / number of choices, 25% for
four) would land that far from chance in more than 5% of exams of that size: |accuracy - chance| <=
1.96 * sqrt(chance * (1 - chance) / n), the binomial spread of a guesser. (Its own standard error
would call 0 of 4 right "certain": a sample's spread is no test of a small sample.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .runner import ModelResult, QuestionResult
from .subjects import categories_of, category_order

Z95 = 1.96


@dataclass(frozen=True)
class Score:
    """An accuracy over n questions, with its standard error and the chance level."""

    correct: int
    n: int
    chance: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")

    @property
    def stderr(self) -> float:
        """lm-eval's mean_stderr: sqrt(sum((x - mean)^2) / (n - 1)) / sqrt(n) for 0/1 outcomes."""
        if self.n < 2:
            return float("nan")
        p = self.accuracy
        var = (self.correct * (1 - p) ** 2 + (self.n - self.correct) * p**2) / (self.n - 1)
        return math.sqrt(var / self.n)

    @property
    def near_chance(self) -> bool:
        if not self.n:
            return True
        return abs(self.accuracy - self.chance) <= Z95 * math.sqrt(self.chance * (1 - self.chance) / self.n)

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "stderr": _finite(self.stderr), "n": self.n, "near_chance": self.near_chance}


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x


def score_of(questions: Sequence[QuestionResult]) -> Score:
    chance = sum(1 / len(q.loglikelihoods) for q in questions) / len(questions) if questions else 0.25
    return Score(sum(q.correct for q in questions), len(questions), chance)


def breakdown(result: ModelResult) -> dict[str, dict[str, Score]]:
    """{"overall": {"all": Score}, "categories": {name: Score}, "subjects": {key: Score}}."""
    benchmark = result.protocol.benchmark
    by_subject: dict[str, list[QuestionResult]] = {}
    for q in result.questions:
        by_subject.setdefault(q.subject, []).append(q)
    by_category: dict[str, list[QuestionResult]] = {}
    for subject, qs in by_subject.items():
        for cat in categories_of(benchmark, subject):
            by_category.setdefault(cat, []).extend(qs)
    order = [c for c in category_order(benchmark) if c in by_category]
    return {
        "overall": {"all": score_of(result.questions)},
        "categories": {c: score_of(by_category[c]) for c in order},
        "subjects": {s: score_of(qs) for s, qs in by_subject.items()},
    }


def agreement(a: ModelResult, b: ModelResult) -> tuple[int, int]:
    """(questions where both predicted the same letter, questions both answered)."""
    theirs = {(q.subject, q.index): q.predicted for q in b.questions}
    both = [(q.predicted, theirs[(q.subject, q.index)]) for q in a.questions if (q.subject, q.index) in theirs]
    return sum(x == y for x, y in both), len(both)


# ------------------------------------------------------------------------------------ output


def to_json(results: Sequence[ModelResult]) -> dict[str, Any]:
    """The `--json FILE` document: per model its protocol, accuracy and every question."""
    out = []
    for r in results:
        parts = breakdown(r)
        overall = parts["overall"]["all"]
        out.append({
            "model": r.model,
            "protocol": r.protocol.to_dict(),
            "accuracy": overall.accuracy,
            "stderr": _finite(overall.stderr),
            "near_chance": overall.near_chance,
            "categories": {k: v.to_dict() for k, v in parts["categories"].items()},
            "subjects": {k: v.to_dict() for k, v in parts["subjects"].items()},
            "seconds": round(r.seconds, 3),
            "questions": [q.to_dict() for q in r.questions],
        })
    return {"results": out}


def write_json(results: Sequence[ModelResult], path: Path) -> None:
    from ..atomic import write_json as write

    write(Path(path), to_json(results))


def _cell(score: Score) -> str:
    if not score.n:
        return "-"
    se = score.stderr
    text = f"{score.accuracy * 100:5.1f} ± {se * 100:.1f}" if not math.isnan(se) else f"{score.accuracy * 100:5.1f}"
    return text + (" ~" if score.near_chance else "  ")


def table(results: Sequence[ModelResult], *, subjects: bool = False) -> str:
    """Accuracy (%) ± standard error, rows = overall and categories (and subjects), one column per
    model; "~" marks a score within noise of chance, explained under the table."""
    if not results:
        return ""
    parts = [breakdown(r) for r in results]
    rows: list[tuple[str, list[Score]]] = [("overall", [p["overall"]["all"] for p in parts])]
    cats = list(dict.fromkeys(c for p in parts for c in p["categories"]))
    rows += [(f"  {c}", [p["categories"].get(c, Score(0, 0, 0.25)) for p in parts]) for c in cats]
    if subjects:
        subs = list(dict.fromkeys(s for p in parts for s in p["subjects"]))
        rows += [(f"  {s}", [p["subjects"].get(s, Score(0, 0, 0.25)) for p in parts]) for s in subs]
    n = [p["overall"]["all"].n for p in parts]
    rows.append(("questions", []))
    heads = [f"[{i + 1}]" for i in range(len(results))]
    cells = [[_cell(s) for s in scores] if name != "questions" else [str(k) for k in n] for name, scores in rows]
    width0 = max(len(name) for name, _ in rows)
    widths = [max(len(heads[i]), *(len(c[i]) for c in cells)) for i in range(len(results))]
    lines = ["  ".join([" " * width0] + [h.rjust(w) for h, w in zip(heads, widths)])]
    for (name, _), row in zip(rows, cells):
        lines.append("  ".join([name.ljust(width0)] + [c.rjust(w) for c, w in zip(row, widths)]))
    lines.append("")
    for i, r in enumerate(results):
        lines.append(f"[{i + 1}] {r.model}: {r.protocol.label()}")
    if len(results) > 1:
        for i, r in enumerate(results[1:], 2):
            same, total = agreement(results[0], r)
            if total:
                lines.append(f"[1] and [{i}] predict the same answer on {same}/{total} questions ({same / total:.0%})")
    if any(s.near_chance for _, scores in rows for s in scores):
        chance = parts[0]["overall"]["all"].chance
        lines.append(f"~ within noise of chance ({chance:.0%}): the 95% interval includes guessing")
    return "\n".join(lines)
