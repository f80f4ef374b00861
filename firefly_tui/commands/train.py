"""`firefly train` (fine-tune on JSONL data, live progress) and `firefly merge` (LoRA -> plain model)."""

from __future__ import annotations

import argparse
import sys

# (option, type, help); every default is None so train.toml < command line is decidable.
_OPTIONS: list[tuple[str, type, str]] = [
    ("--method", str, "sft (default: answers of instruction data), dpo (preference pairs) or pretrain (raw text)"),
    ("--beta", float, "DPO: how strongly the model is held near the starting model (default 0.1)"),
    ("--loss", str, "DPO loss: sigmoid (default, DPO) or ipo"),
    ("--epochs", float, "passes over the data (default 1)"),
    ("--max-steps", int, "optimizer steps; wins over --epochs"),
    ("--batch-size", int, "samples per device per micro-batch (default 16, as in the recipe)"),
    ("--grad-accum", int, "micro-batches per optimizer step (default 1)"),
    ("--lr", float, "peak learning rate (default 3e-5)"),
    ("--warmup-steps", int, "warmup steps (default 3000, at most 3%% of the run)"),
    ("--schedule", str, "cosine (default), linear, constant, constant_with_warmup, ..."),
    ("--max-length", int, "max tokens per sample (default 512)"),
    ("--weight-decay", float, "AdamW weight decay (default 0)"),
    ("--max-grad-norm", float, "gradient clipping (default 1.0)"),
    ("--seed", int, "seed for data order, dropout and init (default 42)"),
    ("--eval-file", str, "JSONL file to evaluate on"),
    ("--eval-fraction", float, "or hold out this fraction of --data (default 0)"),
    ("--eval-every", int, "evaluate every N steps (default: with every checkpoint)"),
    ("--save-every", int, "checkpoint every N steps (default 500)"),
    ("--keep-checkpoints", int, "checkpoints kept (default 2)"),
    ("--log-every", int, "step events every N steps (default 1)"),
    ("--format", str, "prompt format (default: the model's own, as in chat)"),
    ("--precision", str, "auto (default: bf16/fp16 on GPU, fp32 on CPU), bf16, fp16, fp32"),
    ("--deepspeed", int, "DeepSpeed ZeRO stage 2 or 3 (needs the deepspeed extra)"),
    ("--num-processes", int, "processes per machine (default: one per GPU; with --gpu cpu, N CPU processes)"),
    ("--num-machines", int, "machines (accelerate multi-node)"),
    ("--machine-rank", int, "this machine's rank"),
    ("--main-process-ip", str, "address of machine 0"),
    ("--main-process-port", int, "port on machine 0"),
    ("--lora-r", int, "LoRA rank (default 8)"),
    ("--lora-alpha", int, "LoRA alpha (default 16)"),
    ("--lora-dropout", float, "LoRA dropout (default 0.05)"),
]
_FLAGS = [
    ("--packing", "several samples per row, each attending only to itself (sft; pretrain always packs)"),
    ("--precompute-ref", "DPO without LoRA: compute the reference log-probs once instead of keeping a model copy"),
    ("--train-embeddings-only", "train only the embeddings and output head (after extending or pruning a vocabulary)"),
    ("--gradient-checkpointing", "recompute activations to save memory"),
    ("--offload", "ZeRO CPU offload of the optimizer (and parameters with stage 3)"),
    ("--lora", "train LoRA adapters instead of all weights"),
    ("--strict", "refuse data files with any bad line (default: skip and count them)"),
    ("--trust-remote-code", "allow the model's own code"),
]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model: instructions (sft), preference pairs (dpo) or raw text (pretrain)",
        description="Fine-tune a model on instruction data with Firefly's recipe (the loss is computed "
        "on the assistant tokens only), on preference pairs with DPO (--method dpo), or continue its "
        "pretraining on raw text (--method pretrain). Progress goes to the console and RUN_DIR/events.jsonl; Ctrl-C "
        "saves a checkpoint (continue with --resume); the result is RUN_DIR/final.",
    )
    p.add_argument("--gpu", help="devices: 0, 0,1 or cpu (default: 0 where CUDA is, else cpu)")
    p.add_argument("--model", help="model folder or hub id")
    p.add_argument("--data", nargs="+", metavar="FILE", help="training files: JSONL (pretrain: also .txt)")
    p.add_argument("--out", help="run folder")
    p.add_argument("--config", help="train.toml with the same keys as these options")
    p.add_argument("--resume", action="store_true", help="continue --out from its last checkpoint")
    for name, typ, help_ in _OPTIONS:
        p.add_argument(name, type=typ, default=None, help=help_)
    p.add_argument("--lora-targets", nargs="+", default=None, help="module names (default: all linear but lm_head)")
    for name, help_ in _FLAGS:
        p.add_argument(name, action="store_true", default=None, help=help_)
    p.set_defaults(handler=run_train)

    m = subparsers.add_parser(
        "merge",
        help="merge a LoRA run's adapter into a plain model folder",
        description="Merge the LoRA adapter of a `firefly train --lora` run (or an adapter folder) "
        "into its base model, and save a standard model folder.",
    )
    m.add_argument("source", metavar="RUN_DIR_OR_ADAPTER")
    m.add_argument("--out", required=True, help="folder for the merged model")
    m.add_argument("--base", help="base model (default: the one recorded in the adapter)")
    m.add_argument("--trust-remote-code", action="store_true")
    m.add_argument("--force", action="store_true", help="replace a non-empty --out folder (never the run or the base model)")
    m.set_defaults(handler=run_merge)


def _overrides(args: argparse.Namespace) -> dict:
    keys = ["gpu", "model", "data", "out", "lora_targets"]
    keys += [n.lstrip("-").replace("-", "_") for n, _, _ in _OPTIONS]
    keys += [n.lstrip("-").replace("-", "_") for n, _ in _FLAGS]
    values = {k: getattr(args, k) for k in keys}
    values["prompt_format"] = values.pop("format")
    return {k: v for k, v in values.items() if v is not None}


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firefly_core.errors import ConfigError
    from firefly_core.training.config import load_config
    from firefly_core.training.launch import launch
    from firefly_core.training.run_dir import resolve_resume

    overrides = _overrides(args)
    if not args.resume and not _gpu_chosen(args):
        overrides["gpu"] = default_device()
    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out RUN_DIR")
        config = resolve_resume(overrides, Path(args.out))
    else:
        config = load_config(args.config, overrides)
    printer = ConsoleProgress()
    try:
        result = launch(config, resume=args.resume, callbacks=[printer])
    finally:
        printer.close()
    status = result if isinstance(result, str) else result.status
    if status == "stopped":  # the command line's own words for what the app calls Resume
        from firefly_core.training.run import command_line

        print(f"continue with: {command_line(['train', '--resume', '--out', str(config.out)])}", file=sys.stderr)
    # A stopped run is not a finished one: scripts can tell (130, as for Ctrl-C) and --resume it.
    return {"completed": 0, "stopped": STOPPED_EXIT}.get(status, 1)


STOPPED_EXIT = 130


def _gpu_chosen(args: argparse.Namespace) -> bool:
    """Whether --gpu, or a `gpu` key in the --config file, says where to train."""
    if args.gpu is not None:
        return True
    if not args.config:
        return False
    import tomllib
    from pathlib import Path

    try:
        data = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # load_config says what is wrong with the file
    return "gpu" in data


def default_device() -> str:
    """Without --gpu: GPU 0 where CUDA is, else the CPU, said once (the user never asked for a GPU)."""
    import torch

    if torch.cuda.is_available():
        return "0"
    print("no GPU here (CUDA is not available): training on the CPU (--gpu cpu); "
          "on a GPU machine --gpu 0 picks the first GPU", file=sys.stderr, flush=True)
    return "cpu"


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


class ConsoleProgress:
    """Prints a run's events: a summary at start, a live progress bar, checkpoints, the end."""

    def __init__(self) -> None:
        from rich.console import Console

        # Into a file (the app's train.log) lines stay whole: the reader wraps them to its width.
        self.console = Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())
        self.progress = None
        self.task = None

    def _bar(self, total: int, start: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=total, completed=start, stats="")

    def __call__(self, event) -> None:
        from firefly_core.training.events import CheckpointEvent, DoneEvent, ErrorEvent, EvalEvent, StartEvent, StepEvent

        p = self.console.print
        if isinstance(event, StartEvent):
            d = event
            for note in d.notes:
                p(f"[yellow]{escape(note)}[/]")
            if d.resumed_from:
                p(f"resuming from step {d.start_step} ({d.resumed_from})", markup=False)
            unit = {"dpo": "pairs", "pretrain": "documents"}.get(d.config.get("method"), "samples")
            p(f"prompt format {d.prompt_format}, {d.train_samples} training {unit}, "
              f"{d.eval_samples} eval {unit}, {d.supervised_tokens} trained tokens, "
              f"{d.total_steps} steps ({d.steps_per_epoch} per epoch), warmup {d.warmup_steps}, "
              f"{d.world_size} process(es) on {d.device}, precision {'fp32' if d.mixed_precision in ('no', '') else d.mixed_precision}", markup=False)
            if d.bad_lines:
                p(f"[yellow]skipped {d.bad_lines} bad line(s):[/]")
                for line in d.bad_examples:
                    p(f"  {line}", markup=False)
            if d.truncated:
                p(f"{d.truncated} sample(s) cut at --max-length {d.config.get('max_length')}", markup=False)
            if d.cut_away:
                p(f"[yellow]warning: {d.cut_away} sample(s) have no trained token within --max-length "
                  f"and are skipped (first: {escape(', '.join(d.cut_away_where))})[/]")
            self._bar(d.total_steps, d.start_step)
        elif isinstance(event, StepEvent) and self.progress is not None:
            if event.reward_accuracy is not None:  # DPO: what tells whether it learns, in 80 columns
                stats = (f"loss {_num(event.loss, '.4f')}  acc {event.reward_accuracy:.2f}  "
                         f"margin {_num(event.reward_margin, '.2f')}  {event.tokens_per_s:.0f} tok/s")
            else:
                stats = f"loss {_num(event.loss, '.4f')}  lr {event.lr:.2e}  {event.tokens_per_s:.0f} tok/s"
            self.progress.update(self.task, completed=event.step, stats=stats)
        elif isinstance(event, EvalEvent):
            ppl = "" if event.perplexity is None else f", perplexity {event.perplexity:.2f}"
            p(f"eval at step {event.step}: loss {_num(event.loss, '.4f')}{ppl}")
        elif isinstance(event, CheckpointEvent):
            p(f"checkpoint {event.path}", markup=False)
        elif isinstance(event, DoneEvent):
            self.close()
            if event.stopped:
                p(f"{event.message}", markup=False)
            else:
                p(f"done: {event.step} steps, last loss {_num(event.last_loss, '.4f')}, model at {event.final_path}",
                  markup=False)
                if event.message:
                    p(event.message, markup=False)
        elif isinstance(event, ErrorEvent):
            self.close()
            for line in event.traceback[-5:]:
                p(line, markup=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def run_merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firefly_core.training.lora import merge_adapter

    out = merge_adapter(Path(args.source), Path(args.out), base=args.base, trust_remote_code=args.trust_remote_code,
                        force=args.force)
    print(f"merged model saved to {out}", file=sys.stderr)
    return 0
