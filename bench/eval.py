"""`firefly eval` against lm-evaluation-harness's `hf` backend on the same exam, side by side.

    python bench/eval.py                          # 2 subjects x 6 questions, 5-shot, 1 thread
    python bench/eval.py --subjects 4 --questions 20 --threads 2

One process builds a random Qwen2 of a small shape with a real-sized vocabulary (hidden 256,
4 layers, vocab 46,145 as firefly-1b4's: the harness computes the log-softmax of every context
position, so the vocabulary matters) and the test kit's byte-level tokenizer (Chinese characters are
2-3 tokens each, as in BLOOM), writes a C-Eval-layout exam of that many subjects (questions and
choices cut from the kit corpus, 5 dev items each), then scores it:

- lm-eval 0.4.13: `simple_evaluate` on its own `ceval-valid_<subject>` task files (data source
  swapped for the local CSVs, as tests/test_eval.py does), model `hf` (HFLM) in fp32, batch 1
  (the harness already runs the four one-token answers of a question as one forward pass);
- ours: `score_exam` on the same folder, torch engine, fp32: the few-shot header prefilled once per
  subject and kept in the cache, each question prefilling only its own tokens.

Both must give the same log-likelihoods (asserted, 2e-3) and predictions. Printed: the CPU and
PyTorch's SIMD level, seconds for each (model loading excluded on both sides; lm-eval's includes
its dataset loading), questions per second, and the ratio. Timings alternate (lm-eval, ours,
lm-eval, ours) and the best of `--repeat` runs is kept.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_model(out: Path, args) -> Path:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from firefly_core.testkit import build_tokenizer

    tok = build_tokenizer("qwen2")
    config = Qwen2Config(
        vocab_size=max(args.vocab, len(tok)), hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=max(1, args.heads // 2),
        max_position_embeddings=8192, tie_word_embeddings=False, eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_exam(root: Path, subjects: list[str], questions: int) -> Path:
    """C-Eval's layout, the text cut from the kit corpus: a question of ~2 lines, four choices."""
    from firefly_core.testkit import kit_corpus

    lines = [l.strip() for l in kit_corpus().splitlines() if len(l.strip()) > 8]
    k = 0

    def row(i: int) -> list:
        nonlocal k
        q = lines[k % len(lines)] + lines[(k + 1) % len(lines)]
        choices = [lines[(k + 2 + j) % len(lines)][:12] for j in range(4)]
        k += 3
        return [i, q, *choices, "ABCD"[k % 4], ""]

    for subject in subjects:
        for split, n in (("dev", 5), ("val", questions)):
            (root / split).mkdir(parents=True, exist_ok=True)
            with open(root / split / f"{subject}_{split}.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
                for i in range(n):
                    w.writerow(row(i))
    return root


def harness_tasks(data: Path, subjects: list[str], where: Path) -> dict[str, str]:
    """{subject: task YAML}: lm-eval's shipped task file included by path, the data source swapped."""
    import lm_eval
    import yaml

    shipped = Path(lm_eval.__file__).parent / "tasks" / "ceval"
    out = {}
    for s in subjects:
        path = where / f"local-ceval-valid_{s}.yaml"
        path.write_text(yaml.safe_dump({
            "include": str(shipped / f"ceval-valid_{s}.yaml"), "task": f"local-ceval-valid_{s}",
            "dataset_path": "csv", "dataset_name": None,
            "dataset_kwargs": {"data_files": {"dev": str(data / "dev" / f"{s}_dev.csv"), "val": str(data / "val" / f"{s}_val.csv")}},
        }, allow_unicode=True), encoding="utf-8")
        out[s] = str(path)
    return out


def run_harness(hflm, tasks: dict[str, str], shots: int):
    import lm_eval
    from lm_eval.tasks import TaskManager

    t = time.perf_counter()
    out = lm_eval.simple_evaluate(model=hflm, tasks=list(tasks.values()), num_fewshot=shots, log_samples=True,
                                  task_manager=TaskManager(include_defaults=False))
    seconds = time.perf_counter() - t
    lls = {}
    for s in tasks:
        for sample in out["samples"][f"local-ceval-valid_{s}"]:
            lls[(s, sample["doc_id"])] = [float(r[0]) for r in sample["filtered_resps"]]
    return seconds, lls


def run_ours(lm, exams, shots: int):
    from firefly_core.evaluation.runner import score_exam

    t = time.perf_counter()
    results = score_exam(lm, exams, shots)
    return time.perf_counter() - t, {(q.subject, q.index): list(q.loglikelihoods) for q in results}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subjects", type=int, default=2)
    p.add_argument("--questions", type=int, default=6, help="questions per subject")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=46145)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's and datasets' progress bars
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    logging.disable(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    from firefly_core.evaluation.benchmarks import load_exam
    from firefly_core.evaluation.subjects import CEVAL_SUBJECTS
    from firefly_core.models.service import model_service
    from machine import cpu_label

    with tempfile.TemporaryDirectory(prefix="firefly-bench-eval-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("FIREFLY_HOME", str(tmp / "home"))
        subjects = list(CEVAL_SUBJECTS)[: args.subjects]
        folder = build_model(tmp / "model", args)
        data = write_exam(tmp / "exam", subjects, args.questions)
        tasks = harness_tasks(data, subjects, tmp)
        exams = load_exam("ceval", data, subjects=subjects)

        from lm_eval.models.huggingface import HFLM

        hflm = HFLM(pretrained=str(folder), dtype="float32", device="cpu", batch_size=1)
        service = model_service()
        lm = service.get(service.request_for(str(folder), engine="torch", dtype="fp32", device="cpu", threads=args.threads))
        n = sum(len(e.items) for e in exams)
        print(f"CPU: {cpu_label()}; torch {torch.__version__}, {args.threads} thread(s)")
        print(f"model: Qwen2 hidden {args.hidden}, {args.layers} layers, vocab {args.vocab:,}, fp32; exam: "
              f"{len(subjects)} subjects x {args.questions} questions, {args.shots}-shot")
        theirs_s, ours_s = [], []
        for _ in range(args.repeat):
            t_h, lls_h = run_harness(hflm, tasks, args.shots)
            t_o, lls_o = run_ours(lm, exams, args.shots)
            theirs_s.append(t_h)
            ours_s.append(t_o)
        assert lls_h.keys() == lls_o.keys(), "both scored the same questions"
        worst = max(abs(a - b) for k in lls_h for a, b in zip(lls_h[k], lls_o[k]))
        same = sum(max(range(4), key=lambda i: lls_h[k][i]) == max(range(4), key=lambda i: lls_o[k][i]) for k in lls_h)
        assert worst < 2e-3, f"log-likelihoods differ by {worst}"
        assert same == len(lls_h), "predictions differ"
        example = exams[0]
        from firefly_core.evaluation.benchmarks import context_text

        tokens = len(lm.tokenizer(context_text(example, example.items[0], args.shots)).input_ids)
        t_h, t_o = min(theirs_s), min(ours_s)
        print(f"a question's prompt: ~{tokens} tokens; log-likelihoods equal to {worst:.1e}, predictions {same}/{n} equal")
        print(f"lm-eval hf : {t_h:7.2f} s  ({n / t_h:6.2f} questions/s)")
        print(f"firefly    : {t_o:7.2f} s  ({n / t_o:6.2f} questions/s)")
        print(f"ratio      : {t_h / t_o:.1f}x faster")
        service.unload()
    return 0


if __name__ == "__main__":
    sys.exit(main())
