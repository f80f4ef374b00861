"""Exams on disk and their prompts: the C-Eval and CMMLU CSV layouts, the user's own `mc` JSONL,
and the prompt text exactly as lm-evaluation-harness builds it.

Layouts (as the benchmarks release them; the hub datasets fetched by `firefly pull --dataset` hold
the same CSVs):
- C-Eval: `dev/{subject}_dev.csv`, `val/{subject}_val.csv` (`test/` has no answers); columns
  id, question, A, B, C, D, answer, explanation.
- CMMLU: `dev/{subject}.csv`, `test/{subject}.csv`; columns (an unnamed row number), Question,
  A, B, C, D, Answer.
- mc: one JSON object a line: `question` (text), `choices` (2 to 10 texts, shown as A, B, C, …),
  `answer` (the letter, or the 0-based number of the right choice), optional `subject` (a key
  such as "law"; default "mc") and optional `split` ("dev" marks a line as a few-shot example;
  every other line is a question).

Prompt (the harness's `ceval-valid_<subject>` / `cmmlu_<subject>` tasks, lm-eval 0.4.13): the
subject's description line, then the first N dev items (sampler `first_n`, never random), each as `doc_to_text + " " + letter
+ "\\n\\n"` (target delimiter " ", few-shot delimiter "\\n\\n"), then the question's `doc_to_text`:

    {question.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：

and each answer is scored as the continuation " A", " B", … (the target delimiter, then the letter).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import DataError
from .subjects import CEVAL_SUBJECTS, CMMLU_SUBJECTS

BENCHMARKS = ("ceval", "cmmlu", "mc")
DEFAULT_SPLIT = {"ceval": "val", "cmmlu": "test", "mc": "test"}
HARNESS_TASK = {"ceval": "ceval-valid", "cmmlu": "cmmlu", "mc": None}
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
LETTERS = "ABCDEFGHIJ"
MAX_FILE_BYTES = 64 * 1024 * 1024  # the biggest real subject file is well under 1 MB
MAX_CHOICES = len(LETTERS)
SUBJECT_RE = re.compile(r"[^\W][\w-]{0,99}")  # a file-name word: no path separators, no leading dot


@dataclass(frozen=True)
class Item:
    """One multiple-choice question: where it comes from, its text and its right letter."""

    subject: str
    index: int  # 0-based row in its split file (mc: its line among the questions)
    question: str
    choices: tuple[str, ...]
    answer: str  # "A", "B", …

    @property
    def letters(self) -> tuple[str, ...]:
        return tuple(LETTERS[: len(self.choices)])


@dataclass(frozen=True)
class SubjectExam:
    """A subject's questions and the dev items its few-shot header is made of."""

    benchmark: str
    subject: str
    description: str
    dev: tuple[Item, ...]
    items: tuple[Item, ...]

    def shots_for(self, item: Item, shots: int) -> list[Item]:
        """The harness's `first_n` few-shot examples: the first N dev items. (lm-eval 0.4.13 drops
        a shot equal to the question only when shots and questions come from the same split; a
        dev split never is the scored split here.)"""
        return list(self.dev[:shots])


def doc_to_text(item: Item) -> str:
    """The harness's doc_to_text: the question (stripped), the lettered choices, then 答案：."""
    lines = [item.question.strip()] + [f"{letter}. {text}" for letter, text in zip(item.letters, item.choices)]
    return "\n".join(lines) + "\n答案："


def context_text(exam: SubjectExam, item: Item, shots: int) -> str:
    """The whole prompt before the answer: description, N worked examples, the question."""
    parts = [exam.description]
    for shot in exam.shots_for(item, shots):
        parts.append(doc_to_text(shot) + TARGET_DELIMITER + shot.answer + FEWSHOT_DELIMITER)
    parts.append(doc_to_text(item))
    return "".join(parts)


def continuations(item: Item) -> list[str]:
    """The scored continuations: the target delimiter and each letter (" A", " B", …)."""
    return [TARGET_DELIMITER + letter for letter in item.letters]


def description_for(benchmark: str, subject: str) -> str:
    """The subject's description line, as the harness's generated task YAMLs write it."""
    if benchmark == "ceval":
        name = CEVAL_SUBJECTS[subject][0] if subject in CEVAL_SUBJECTS else subject
        return f"以下是中国关于{name}的单项选择题，请选出其中的正确答案。\n\n"
    name = CMMLU_SUBJECTS[subject][0] if subject in CMMLU_SUBJECTS else subject
    if benchmark == "cmmlu":
        return f"以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n"
    return f"以下是关于{name}的单项选择题，请选出其中的正确答案。\n\n" if subject != "mc" else "以下是单项选择题，请选出其中的正确答案。\n\n"


# ------------------------------------------------------------------------------------ reading


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DataError(f"{path} is {size:,} bytes, too large for an exam file", "check that this is the right file")
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (bad byte at offset {e.start})", "save it as UTF-8") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a file") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _read_csv(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV with a header holding `columns` (a missing cell reads as "")."""
    text = _read_text(path)
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(
                f"{path} has no column {missing[0]!r} (its header: {', '.join(map(repr, header[:10]))})",
                f"a file of this layout starts with the header: {','.join(columns)}",
            )
        rows = []
        for row in reader:
            rows.append({k: ("" if v is None else v) for k, v in row.items() if k is not None})
        return rows
    except csv.Error as e:
        raise DataError(f"{path} is not a readable CSV file ({e})") from None


def _answer_letter(value: object, n_choices: int, where: str) -> str:
    letters = LETTERS[:n_choices]
    if isinstance(value, bool):
        value = None
    if isinstance(value, int) and 0 <= value < n_choices:
        return letters[value]
    if isinstance(value, str) and value.strip() in letters and value.strip():
        return value.strip()
    raise DataError(f"{where}: the answer {value!r} is not one of {', '.join(letters)}", "write the right choice's letter")


def _items(benchmark: str, subject: str, rows: Sequence[dict], where: object) -> tuple[Item, ...]:
    q, a = ("question", "answer") if benchmark == "ceval" else ("Question", "Answer")
    return tuple(
        Item(
            subject=subject,
            index=i,
            question=row[q],
            choices=(row["A"], row["B"], row["C"], row["D"]),
            answer=_answer_letter(row[a], 4, f"{where}, row {i + 1}"),
        )
        for i, row in enumerate(rows)
    )


def _columns(benchmark: str) -> list[str]:
    return ["question", "A", "B", "C", "D", "answer"] if benchmark == "ceval" else ["Question", "A", "B", "C", "D", "Answer"]


def _read_parquet(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of one Parquet file (the hub's converted datasets), every cell as text."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path} is a Parquet file, and reading it needs pyarrow", "pip install pyarrow") from None
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise DataError(f"{path} is too large for an exam file")
        table = pq.read_table(path)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow's errors for a damaged file are many
        raise DataError(f"{path} is not a readable Parquet file ({type(e).__name__}: {e})") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{path} has no column {missing[0]!r}", f"its columns: {', '.join(table.column_names[:10])}")
    return [{k: "" if v is None else str(v) for k, v in row.items()} for row in table.to_pylist()]


@dataclass(frozen=True)
class _Layout:
    """Where a benchmark's subject files are: the released CSV folders, or the hub's Parquet
    conversion (`{subject}/{split}-00000-of-00001.parquet`)."""

    benchmark: str
    root: Path
    parquet: bool

    def file(self, split: str, subject: str) -> Path | None:
        if self.parquet:
            found = sorted((self.root / subject).glob(f"{split}-*.parquet")) if (self.root / subject).is_dir() else []
            return found[0] if found else None
        path = self.root / split / (f"{subject}_{split}.csv" if self.benchmark == "ceval" else f"{subject}.csv")
        return path if path.is_file() else None

    def subjects(self, split: str) -> list[str]:
        if self.parquet:
            return sorted(p.parent.name for p in self.root.glob(f"*/{split}-*.parquet"))
        folder = self.root / split
        suffix = f"_{split}.csv" if self.benchmark == "ceval" else ".csv"
        if not folder.is_dir():
            return []
        return sorted(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file())

    def items(self, split: str, subject: str, path: Path) -> tuple[Item, ...]:
        columns = _columns(self.benchmark)
        rows = _read_parquet(path, columns) if self.parquet else _read_csv(path, columns)
        return _items(self.benchmark, subject, rows, path)


def _layout_hint(benchmark: str) -> str:
    if benchmark == "ceval":
        return "a C-Eval folder holds dev/{subject}_dev.csv and val/{subject}_val.csv (firefly pull --dataset ceval/ceval-exam)"
    return "a CMMLU folder holds dev/{subject}.csv and test/{subject}.csv (firefly pull --dataset haonan-li/cmmlu)"


def find_layout(benchmark: str, root: Path, split: str) -> _Layout:
    """The exam's files: `root/{split}/` (or one folder below, as the released zips keep them in
    `data/`), else the hub's Parquet subject folders."""
    if (root / split).is_dir():
        return _Layout(benchmark, root, False)
    below = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / split).is_dir()] if root.is_dir() else []
    if len(below) == 1:
        return _Layout(benchmark, below[0], False)
    if root.is_dir() and any(root.glob(f"*/{split}-*.parquet")):
        return _Layout(benchmark, root, True)
    raise DataError(f"{root} has no {split}/ folder of {benchmark} questions", _layout_hint(benchmark))


def load_csv_exam(
    benchmark: str, root: Path, split: str, subjects: Iterable[str] | None = None, limit: int | None = None
) -> list[SubjectExam]:
    """The subjects of a C-Eval or CMMLU folder (all of them, or `subjects` in that order)."""
    layout = find_layout(benchmark, Path(root), split)
    available = layout.subjects(split)
    wanted = list(subjects) if subjects else available
    if not wanted:
        raise DataError(f"{layout.root} has no {benchmark} subject files for {split}", _layout_hint(benchmark))
    exams = []
    for subject in wanted:
        if not SUBJECT_RE.fullmatch(subject):
            raise DataError(f"{subject!r} is not a subject key", "subject keys are file-name words, e.g. high_school_physics")
        path = layout.file(split, subject)
        if path is None:
            near = ", ".join(available[:8]) or "none"
            raise DataError(f"no {split} file for subject {subject!r} in {layout.root}", f"subjects here: {near}")
        dev_path = layout.file("dev", subject)
        dev = layout.items("dev", subject, dev_path) if dev_path is not None else ()
        items = layout.items(split, subject, path)
        if limit is not None:
            items = items[:limit]
        exams.append(SubjectExam(benchmark, subject, description_for(benchmark, subject), dev, items))
    if not any(e.items for e in exams):
        raise DataError(f"the {split} files of {', '.join(wanted[:5])} hold no questions", "check the files, or the --split")
    return exams


def load_mc_exam(path: Path, subjects: Iterable[str] | None = None, limit: int | None = None) -> list[SubjectExam]:
    """The user's own multiple-choice JSONL (fields in the module docstring), grouped by subject."""
    path = Path(path)
    text = _read_text(path)
    dev: dict[str, list[Item]] = {}
    items: dict[str, list[Item]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {n}"
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise DataError(f"{where} is not JSON ({getattr(e, 'msg', e)})", "one JSON object a line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where} is not a JSON object", 'example: {"question": "…", "choices": ["…", "…"], "answer": "A"}')
        question, choices = obj.get("question"), obj.get("choices")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where} has no question text", 'give "question": "…"')
        if (not isinstance(choices, list) or not 2 <= len(choices) <= MAX_CHOICES
                or not all(isinstance(c, str) for c in choices)):
            raise DataError(f"{where}: choices must be a list of 2 to {MAX_CHOICES} texts", 'give "choices": ["…", "…", "…", "…"]')
        subject = obj.get("subject", "mc")
        if not isinstance(subject, str) or not subject.strip() or len(subject) > 100:
            raise DataError(f"{where}: subject must be a short text")
        subject = subject.strip()
        is_dev = obj.get("split") == "dev"
        bucket = (dev if is_dev else items).setdefault(subject, [])
        bucket.append(
            Item(subject, len(bucket), question, tuple(choices), _answer_letter(obj.get("answer"), len(choices), where))
        )
    order = list(subjects) if subjects else list(dict.fromkeys([*items]))
    if not order:
        raise DataError(f"{path} has no questions (lines without \"split\": \"dev\")")
    exams = []
    for subject in order:
        if subject not in items:
            raise DataError(f"{path} has no questions of subject {subject!r}", f"subjects there: {', '.join(items)}")
        qs = tuple(items[subject][:limit] if limit is not None else items[subject])
        exams.append(SubjectExam("mc", subject, description_for("mc", subject), tuple(dev.get(subject, ())), qs))
    return exams


def load_exam(
    benchmark: str,
    data: str | Path,
    *,
    split: str | None = None,
    subjects: Iterable[str] | None = None,
    limit: int | None = None,
) -> list[SubjectExam]:
    """An exam from a folder (C-Eval/CMMLU layout), a JSONL file (mc), or a dataset downloaded
    with `firefly pull --dataset ID`."""
    if benchmark not in BENCHMARKS:
        raise DataError(f"unknown benchmark {benchmark!r}", f"use one of: {', '.join(BENCHMARKS)}")
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be 1 or more (got {limit})")
    split = split or DEFAULT_SPLIT[benchmark]
    if split != Path(split).name or split in ("", ".", ".."):
        raise DataError(f"{split!r} is not a split name", "use dev, val or test")
    root = resolve_data(data)
    if benchmark == "mc":
        if root.is_dir():
            raise DataError(f"{root} is a folder; --benchmark mc reads one JSONL file", "pass the .jsonl file")
        return load_mc_exam(root, subjects, limit)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of {benchmark} CSV files", _layout_hint(benchmark))
    return load_csv_exam(benchmark, root, split, subjects, limit)


def resolve_data(data: str | Path) -> Path:
    """A local path as it is; a hub dataset id (org/name) as its downloaded snapshot folder."""
    path = Path(str(data)).expanduser()
    if path.exists():
        return path
    from ..models.inventory import looks_like_hub_id

    if looks_like_hub_id(str(data)):
        from ..models.hub import find_dataset

        found = find_dataset(str(data))
        if found is not None:
            return found
        raise DataError(f"dataset {data} is not downloaded", f"get it first: firefly pull --dataset {data}")
    raise DataError(f"{data} does not exist", "pass an exam folder, a .jsonl file or a dataset id pulled with firefly pull --dataset")
