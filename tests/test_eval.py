"""`firefly eval` against lm-evaluation-harness itself: the same exam files in C-Eval's and CMMLU's
own layouts, scored by lm-eval's `ceval-valid_<subject>` / `cmmlu_<subject>` tasks with its `hf`
model and by ours (fp32 tiny models): same log-likelihoods, same predictions, same accuracy.
Plus the llama.cpp engine against torch, the JSON file's shape, the CLI and bad exam files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from firefly_core.errors import DataError, FireflyError
from firefly_core.evaluation.benchmarks import context_text, load_exam
from firefly_core.evaluation.report import Score, breakdown, table, to_json
from firefly_core.evaluation.runner import ModelResult, Protocol, evaluate_model, score_exam

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Hand-written questions (our own, short so 5-shot prompts fit the tiny models' window).
PHYSICS = [
    ("物体做匀速直线运动时，加速度为", "零", "正", "负", "不确定", "A"),
    ("光在真空中的速度约为", "3×10^8 m/s", "340 m/s", "1 m/s", "3×10^5 m/s", "A"),
    ("电阻的单位是", "伏特", "安培", "欧姆", "瓦特", "C"),
    ("力的单位是", "焦耳", "牛顿", "帕斯卡", "库仑", "B"),
    ("声音不能在哪里传播", "水", "空气", "钢铁", "真空", "D"),
    ("重力加速度约为", "9.8 m/s²", "1 m/s²", "100 m/s²", "0.1 m/s²", "A"),
    ("功的单位是", "牛顿", "焦耳", "瓦特", "伏特", "B"),
    ("  水的沸点在标准大气压下是 ", "50℃", "100℃", "0℃", "200℃", "B"),
]
LAW = [
    ("我国的根本大法是", "刑法", "民法典", "宪法", "行政法", "C"),
    ("公民的基本义务包括", "纳税", "旅游", "购物", "睡觉", "A"),
    ("法律由谁制定", "企业", "国家", "个人", "学校", "B"),
    ("合同成立需要", "要约和承诺", "只有要约", "只有承诺", "都不需要", "A"),
    ("未成年人是指未满几周岁的公民", "十六", "十四", "二十", "十八", "D"),
    ("刑罚分为主刑和", "附加刑", "罚款", "警告", "拘留", "A"),
    ("我国的立法机关是", "国务院", "全国人民代表大会", "最高法院", "最高检察院", "B"),
    ("Which law protects consumers?", "消费者权益保护法", "刑法", "婚姻法", "税法", "A"),
]
EXAM = {"high_school_physics": PHYSICS, "law": LAW}
CMMLU_EXAM = {"high_school_physics": PHYSICS, "jurisprudence": LAW}


def write_ceval(root: Path, exam=EXAM) -> Path:
    """C-Eval's layout: dev/{subject}_dev.csv (5 rows with explanations), val/{subject}_val.csv."""
    for subject, rows in exam.items():
        for split, part in (("dev", rows[:5]), ("val", rows[5:] + rows[:1])):
            (root / split).mkdir(parents=True, exist_ok=True)
            with open(root / split / f"{subject}_{split}.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
                for i, r in enumerate(part):
                    w.writerow([i, *r, "因为……" if split == "dev" else ""])
    return root


def write_cmmlu(root: Path, exam=CMMLU_EXAM) -> Path:
    """CMMLU's layout: dev/{subject}.csv, test/{subject}.csv, an unnamed row-number column first."""
    for subject, rows in exam.items():
        for split, part in (("dev", rows[:5]), ("test", rows[5:] + rows[1:3])):
            (root / split).mkdir(parents=True, exist_ok=True)
            with open(root / split / f"{subject}.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["", "Question", "A", "B", "C", "D", "Answer"])
                for i, r in enumerate(part):
                    w.writerow([i, *r])
    return root


@pytest.fixture(scope="module")
def ceval_dir(tmp_path_factory) -> Path:
    return write_ceval(tmp_path_factory.mktemp("ceval"))


@pytest.fixture(scope="module")
def cmmlu_dir(tmp_path_factory) -> Path:
    return write_cmmlu(tmp_path_factory.mktemp("cmmlu"))


def _torch_lm(path: Path):
    from firefly_core.models.service import model_service

    service = model_service()
    return service.get(service.request_for(str(path), engine="torch", dtype="fp32", device="cpu"))


# ------------------------------------------------------------------------------------ lm-eval oracle


def _harness_task(benchmark: str, data: Path, subject: str, where: Path) -> tuple[str, str]:
    """(task name, YAML path) of lm-eval's own task for `subject` with only its data source swapped
    for our local CSVs: a YAML that `include`s the shipped task file (its description, prompt,
    choices, sampler and metrics as they are) and overrides dataset_path/name/kwargs."""
    import lm_eval
    import yaml

    tasks = Path(lm_eval.__file__).parent / "tasks"
    if benchmark == "ceval":
        shipped = tasks / "ceval" / f"ceval-valid_{subject}.yaml"
        files = {"dev": str(data / "dev" / f"{subject}_dev.csv"), "val": str(data / "val" / f"{subject}_val.csv")}
    else:
        shipped = tasks / "cmmlu" / f"cmmlu_{subject}.yaml"
        files = {"dev": str(data / "dev" / f"{subject}.csv"), "test": str(data / "test" / f"{subject}.csv")}
    name = f"local-{shipped.stem}"
    path = where / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "include": str(shipped), "task": name, "dataset_path": "csv", "dataset_name": None,
        "dataset_kwargs": {"data_files": files},
    }, allow_unicode=True), encoding="utf-8")
    return name, str(path)


def _harness_run(model_dir: Path, benchmark: str, data: Path, subjects: list[str], shots: int, where: Path):
    """lm-eval's simple_evaluate with its `hf` model on the folder, all subjects in one run;
    {subject: (samples by doc_id, metrics)}. Its task index of built-in YAMLs is not built (our task
    files include the shipped ones by path), which saves ~20 s a run."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval (the oracle) is not installed: pip install lm-eval")
    from lm_eval.tasks import TaskManager

    tasks = {s: _harness_task(benchmark, data, s, where) for s in subjects}
    out = lm_eval.simple_evaluate(
        model=_harness_model(model_dir), tasks=[path for _, path in tasks.values()], num_fewshot=shots,
        log_samples=True, task_manager=TaskManager(include_defaults=False),
    )
    return {s: (sorted(out["samples"][name], key=lambda x: x["doc_id"]), out["results"][name]) for s, (name, _) in tasks.items()}


_HARNESS_MODELS: dict[str, object] = {}


def _harness_model(model_dir: Path):
    from lm_eval.models.huggingface import HFLM

    key = str(model_dir)
    if key not in _HARNESS_MODELS:
        _HARNESS_MODELS[key] = HFLM(pretrained=key, dtype="float32", device="cpu", batch_size=1)
    return _HARNESS_MODELS[key]


@pytest.mark.parametrize("shots", [0, 5])
@pytest.mark.parametrize("benchmark", ["ceval", "cmmlu"])
def test_same_loglikelihoods_predictions_and_accuracy_as_lm_eval(benchmark, shots, qwen_dir, ceval_dir, cmmlu_dir, tmp_path):
    data = ceval_dir if benchmark == "ceval" else cmmlu_dir
    subjects = list(EXAM if benchmark == "ceval" else CMMLU_EXAM)
    exams = load_exam(benchmark, data, subjects=subjects)
    ours = score_exam(_torch_lm(qwen_dir), exams, shots)
    correct_ours = correct_theirs = 0
    harness = _harness_run(qwen_dir, benchmark, data, subjects, shots, tmp_path)
    for subject in subjects:
        theirs, metrics = harness[subject]
        mine = [q for q in ours if q.subject == subject]
        assert [s["doc_id"] for s in theirs] == [q.index for q in mine]
        for sample, q in zip(theirs, mine):
            harness_lls = [float(r[0]) for r in sample["filtered_resps"]]
            assert q.loglikelihoods == pytest.approx(harness_lls, abs=1e-3), (subject, q.index)
            assert "ABCD"[sample["target"]] == q.answer
            assert bool(sample["acc"]) == q.correct
        correct_ours += sum(q.correct for q in mine)
        correct_theirs += sum(s["acc"] for s in theirs)
        assert Score(sum(q.correct for q in mine), len(mine), 0.25).accuracy == pytest.approx(metrics["acc,none"])
        assert Score(sum(q.correct for q in mine), len(mine), 0.25).stderr == pytest.approx(metrics["acc_stderr,none"])
    assert correct_ours == correct_theirs


def test_prompt_text_is_the_harness_prompt(ceval_dir, tmp_path):
    """The context string itself, against lm-eval's own fewshot_context for the same docs."""
    pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    name, path = _harness_task("ceval", ceval_dir, "high_school_physics", tmp_path)
    task = TaskManager(include_defaults=False).load([path])["tasks"][name]
    exam = load_exam("ceval", ceval_dir, subjects=["high_school_physics"])[0]
    docs = list(task.validation_docs())
    assert len(docs) == len(exam.items)
    for shots in (0, 5):
        for item, doc in zip(exam.items, docs):
            assert context_text(exam, item, shots) == task.fewshot_context(doc, shots)


# ------------------------------------------------------------------------------------ engines, output


def test_llamacpp_engine_scores_as_torch(qwen_dir, ceval_dir, llamacpp):
    exams = load_exam("ceval", ceval_dir)
    torch_run = evaluate_model(str(qwen_dir), exams, shots=2, split="val", engine="torch", dtype="fp32", device="cpu")
    gguf_run = evaluate_model(str(qwen_dir), exams, shots=2, split="val", engine="llamacpp", quantize="f32")
    assert gguf_run.protocol.engine == "llamacpp" and torch_run.protocol.engine == "torch"
    for a, b in zip(torch_run.questions, gguf_run.questions):
        assert b.loglikelihoods == pytest.approx(a.loglikelihoods, abs=2e-2)
    from firefly_core.evaluation.report import agreement

    same, total = agreement(torch_run, gguf_run)
    assert total == len(torch_run.questions) and same == total
    text = table([torch_run, gguf_run])
    assert "[1] and [2] predict the same answer on" in text


def test_json_has_the_issue_shape(qwen_dir, ceval_dir, tmp_path):
    exams = load_exam("ceval", ceval_dir, limit=2)
    result = evaluate_model(str(qwen_dir), exams, shots=1, split="val", engine="torch", dtype="fp32", device="cpu")
    doc = to_json([result])
    (entry,) = doc["results"]
    assert entry["model"] == str(qwen_dir)
    assert {"benchmark", "harness_task", "shots", "split", "dtype", "engine", "prompt_template"} <= set(entry["protocol"])
    assert entry["protocol"]["shots"] == 1 and entry["protocol"]["dtype"] == "float32"
    assert entry["protocol"]["prompt_template"] is None and entry["protocol"]["harness_task"] == "ceval-valid"
    assert entry["accuracy"] == pytest.approx(sum(q.correct for q in result.questions) / 4)
    q = entry["questions"][0]
    assert set(q) == {"subject", "index", "loglikelihoods", "answer", "predicted"}
    assert q["subject"] == "high_school_physics" and q["index"] == 0 and len(q["loglikelihoods"]) == 4
    assert q["predicted"] == "ABCD"[max(range(4), key=lambda i: q["loglikelihoods"][i])]
    json.dumps(doc)  # serializable as is


def test_categories_micro_average_and_chance_warning():
    proto = Protocol("ceval", "ceval-valid", 5, "val", "float32", "torch", None)
    from firefly_core.evaluation.runner import QuestionResult

    qs = [QuestionResult("high_school_physics", i, (0.0, -1, -2, -3), "A", "A") for i in range(30)]
    qs += [QuestionResult("law", i, (0.0, -1, -2, -3), "B", "A") for i in range(10)]
    parts = breakdown(ModelResult("m", proto, qs))
    assert parts["overall"]["all"].accuracy == pytest.approx(30 / 40)  # micro: weighted by questions
    assert parts["categories"]["STEM"].accuracy == 1.0 and parts["categories"]["Humanities"].accuracy == 0.0
    assert not parts["overall"]["all"].near_chance
    assert Score(1, 4, 0.25).near_chance and Score(0, 4, 0.25).near_chance and not Score(40, 40, 0.25).near_chance
    # lm-eval's mean_stderr (sample standard deviation / sqrt(n))
    import statistics

    xs = [1] * 30 + [0] * 10
    assert parts["overall"]["all"].stderr == pytest.approx(statistics.stdev(xs) / len(xs) ** 0.5)


# ------------------------------------------------------------------------------------ files and CLI


def test_cli_table_and_json(qwen_dir, ceval_dir, tmp_path, capsys):
    from firefly_tui.cli import main

    out = tmp_path / "r.json"
    rc = main(["eval", str(qwen_dir), "--benchmark", "ceval", "--data", str(ceval_dir), "--shots", "2",
               "--subjects", "law", "--dtype", "fp32", "--device", "cpu", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "overall" in text and "Humanities" in text and "ceval val, 2-shot" in text
    doc = json.loads(out.read_text())
    assert [q["subject"] for q in doc["results"][0]["questions"]] == ["law"] * 4


def test_mc_jsonl(qwen_dir, tmp_path):
    path = tmp_path / "mine.jsonl"
    lines = [{"question": "1+1=?", "choices": ["1", "2", "3"], "answer": "B", "split": "dev"},
             {"question": "2+2=?", "choices": ["4", "5"], "answer": 0},
             {"question": "天空是什么颜色", "choices": ["红", "蓝", "绿", "黑"], "answer": "B", "subject": "常识"}]
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    exams = load_exam("mc", path)
    assert [(e.subject, len(e.items), len(e.dev)) for e in exams] == [("mc", 1, 1), ("常识", 1, 0)]
    assert context_text(exams[0], exams[0].items[0], 1).endswith("1+1=?\nA. 1\nB. 2\nC. 3\n答案： B\n\n2+2=?\nA. 4\nB. 5\n答案：")
    results = score_exam(_torch_lm(qwen_dir), exams[:1], 1)
    assert len(results[0].loglikelihoods) == 2


@pytest.mark.parametrize("content, message", [
    ("id,question,A,B\n0,q,a,b\n", "no column 'C'"),
    ("id,question,A,B,C,D,answer\n0,q,a,b,c,d,E\n", "answer 'E'"),
    (b"\xff\xfe bad", "not UTF-8"),
])
def test_bad_exam_files_are_clear_errors(tmp_path, content, message):
    (tmp_path / "val").mkdir()
    f = tmp_path / "val" / "law_val.csv"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=message):
        load_exam("ceval", tmp_path)


def test_missing_things_are_clear_errors(tmp_path, ceval_dir):
    with pytest.raises(DataError, match="no val/ folder"):
        load_exam("ceval", tmp_path)
    with pytest.raises(DataError, match="not downloaded"):
        load_exam("ceval", "ceval/ceval-exam")
    with pytest.raises(DataError, match="subject 'nope'"):
        load_exam("ceval", ceval_dir, subjects=["nope"])
    exams = load_exam("ceval", ceval_dir)
    with pytest.raises(FireflyError, match="6-shot needs 6 dev examples"):
        score_exam(None, exams, 6)


# ------------------------------------------------------------------------------------ datasets


def _ceval_repo_files(ceval_dir: Path) -> dict[str, bytes]:
    files = {p.relative_to(ceval_dir).as_posix(): p.read_bytes() for p in ceval_dir.rglob("*.csv")}
    files.update({
        "README.md": b"# mini C-Eval\n",
        "ceval-exam.py": b"raise SystemExit('a loading script is never fetched')\n",
        "ceval-exam.zip": b"PK\x03\x04" + b"\0" * 100,
    })
    return files


def test_pull_dataset_fetches_only_data_files_and_eval_reads_it(online, ceval_dir):
    from firefly_core.models import hub

    online.add_repo("test-org/ceval-mini", _ceval_repo_files(ceval_dir))
    path = hub.pull_dataset("test-org/ceval-mini")
    assert path == hub.dataset_cache_folder("test-org/ceval-mini") / "snapshots" / online.repos["test-org/ceval-mini"].sha
    assert "datasets--test-org--ceval-mini" in str(path)
    got = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert got == {*(p.relative_to(ceval_dir).as_posix() for p in ceval_dir.rglob("*.csv")), "README.md"}
    fetched = [r.path for r in online.requests if r.method == "GET"]
    assert fetched[0].startswith("/api/datasets/test-org/ceval-mini")
    assert not any(p.endswith((".py", ".zip")) for p in fetched)
    # the exam by its dataset id reads exactly what the folder holds
    by_id = load_exam("ceval", "test-org/ceval-mini")
    by_folder = load_exam("ceval", ceval_dir)
    assert by_id == by_folder
    online.requests.clear()
    assert hub.pull_dataset("test-org/ceval-mini") == path  # a second pull fetches no file again
    assert not [r for r in online.requests if "/resolve/" in r.path]


@pytest.mark.parametrize("name", ["../../../../victim.csv", "/tmp/firefly-abs.csv", "ok/../../../../x.csv", "evil\n.csv"])
def test_pull_dataset_refuses_hostile_names_before_any_file(online, ceval_dir, name):
    from firefly_core.models import hub

    online.add_repo("test-org/evil-exam", {**_ceval_repo_files(ceval_dir), name: b"x"})
    with pytest.raises(FireflyError, match="not a safe file name"):
        hub.pull_dataset("test-org/evil-exam")
    assert not [r for r in online.requests if "/resolve/" in r.path or "/cdn/" in r.path]


def test_pull_dataset_refuses_oversized_and_empty_repos(online, ceval_dir, monkeypatch):
    from firefly_core.models import hub

    online.add_repo("test-org/big-exam", _ceval_repo_files(ceval_dir))
    monkeypatch.setattr(hub, "DATASET_MAX_BYTES", 100)
    with pytest.raises(FireflyError, match="at most"):
        hub.pull_dataset("test-org/big-exam")
    online.add_repo("test-org/script-only", {"loader.py": b"print('x')", "data.zip": b"PK"})
    with pytest.raises(FireflyError, match="no CSV, JSONL or Parquet"):
        hub.pull_dataset("test-org/script-only")
    assert not [r for r in online.requests if "/resolve/" in r.path or "/cdn/" in r.path]


def test_pull_dataset_cli(online, ceval_dir, capsys):
    from firefly_tui.cli import main

    online.add_repo("test-org/ceval-cli", _ceval_repo_files(ceval_dir))
    assert main(["pull", "--dataset", "test-org/ceval-cli"]) == 0
    assert "ready: test-org/ceval-cli" in capsys.readouterr().out
    assert main(["pull", "--dataset", "test-org/ceval-cli", "--use"]) == 1


def test_hub_parquet_layout_reads_as_the_csv_folder(ceval_dir, tmp_path):
    """The hub's Parquet conversion ({subject}/{split}-00000-of-00001.parquet) gives the same exam."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    for split in ("dev", "val"):
        for f in (ceval_dir / split).glob("*.csv"):
            subject = f.name[: -len(f"_{split}.csv")]
            with open(f, encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
            table = pa.table({k: [int(r[k]) if k == "id" else r[k] for r in rows] for k in rows[0]})
            (tmp_path / subject).mkdir(exist_ok=True)
            pq.write_table(table, tmp_path / subject / f"{split}-00000-of-00001.parquet")
    assert load_exam("ceval", tmp_path) == load_exam("ceval", ceval_dir)


def test_chat_template_run_is_labelled_and_zero_shot(qwen_dir, ceval_dir):
    """--chat-template: 0-shot, the description as the system turn and the question as the user
    turn in the model's format, each letter (no delimiter) as the start of the reply; labelled."""
    from firefly_core.formats import Message

    exams = load_exam("ceval", ceval_dir, subjects=["law"], limit=1)
    result = evaluate_model(str(qwen_dir), exams, shots=5, split="val", engine="torch", dtype="fp32", device="cpu",
                            chat_template=True)
    assert result.protocol.prompt_template == "chat_template" and result.protocol.shots == 0
    assert result.protocol.harness_task is None
    lm = _torch_lm(qwen_dir)
    exam, item = exams[0], exams[0].items[0]
    from firefly_core.evaluation.benchmarks import doc_to_text

    ids = lm.prompt_format.render(lm.tokenizer, [Message("system", exam.description), Message("user", doc_to_text(item))],
                                  add_generation_prompt=True).ids
    with __import__("torch").no_grad():
        logp = lm.model(__import__("torch").tensor([ids])).logits[0, -1].float().log_softmax(-1)
    letters = [lm.tokenizer.encode(x, add_special_tokens=False) for x in "ABCD"]
    assert all(len(x) == 1 for x in letters)  # the kit tokenizer has a token per letter
    assert list(result.questions[0].loglikelihoods) == pytest.approx([float(logp[x[0]]) for x in letters], abs=1e-4)


@pytest.mark.parametrize("subject", ["../../etc/passwd", "law/../law", ".hidden", "*", ""])
def test_subject_keys_cannot_reach_outside_the_exam(ceval_dir, subject):
    with pytest.raises(DataError):
        load_exam("ceval", ceval_dir, subjects=[subject])


def test_an_exam_without_questions_is_an_error(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "law_val.csv").write_text("id,question,A,B,C,D,answer,explanation\n", encoding="utf-8")
    with pytest.raises(DataError, match="hold no questions"):
        load_exam("ceval", tmp_path)
