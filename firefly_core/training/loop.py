"""The training loop: data -> micro-batches -> loss over supervised tokens -> optimizer steps, with
events, checkpoints, exact resume, graceful stop on SIGINT/SIGTERM and a clear out-of-memory error.

Runs in every process of a run (one in-process, or each worker of `accelerate launch`/torchrun);
accelerate owns device placement, mixed precision, DDP/DeepSpeed wrapping and gradient
accumulation. The batch plan is a pure function of (seed, epoch), known to every process, so
the data position is just the step number and the loss normaliser (supervised tokens of the whole
optimizer step, across micro-batches and processes) needs no communication.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..models.catalog import prompt_format_for
from ..errors import FireflyError, OutOfMemoryError
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .distributed import build_accelerator, resolve_precision  # noqa: F401  (resolve_precision: re-export)
from .dpo import reward_fields
from .events import (CheckpointEvent, DoneEvent, ErrorEvent, EvalEvent, EventWriter, StartEvent, StepEvent, TrainEvent,
                     read_events)
from ..quiet import quiet_libraries

OOM_SUGGESTIONS = (
    "lower --batch-size and raise --grad-accum to keep the same effective batch; "
    "add --gradient-checkpointing; use --precision bf16; lower --max-length; "
    "use --lora; or --deepspeed 2 --offload (ZeRO with CPU offload)"
)

Callback = Callable[[TrainEvent], None]


@dataclass
class RunResult:
    status: str  # "completed" | "stopped"
    step: int
    total_steps: int
    final_path: Path | None
    checkpoint: Path | None
    losses: dict[int, float] = field(default_factory=dict)


@dataclass
class Plan:
    """How many micro-batches make a step, and the epoch plans (cached)."""

    lengths: list[int]
    batch_size: int
    micro_per_step: int  # grad_accum * world_size
    seed: int
    _epochs: dict[int, list[list[int]]] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(math.ceil(len(self.lengths) / self.batch_size) / self.micro_per_step))

    def epoch(self, e: int) -> list[list[int]]:
        if e not in self._epochs:
            from ..data import plan_epoch

            batches = plan_epoch(self.lengths, self.batch_size, self.seed, e)
            need = self.steps_per_epoch * self.micro_per_step
            # Fill the last step with the epoch's first batches so every process does the same
            # number of micro-batches (DDP and ZeRO need that) and no sample is dropped.
            batches = batches + batches[: need - len(batches)] if len(batches) < need else batches
            self._epochs = {e: batches}
        return self._epochs[e]

    def step_batches(self, step: int) -> list[list[int]]:
        """All micro-batches (every process) of optimizer step `step` (0-based)."""
        e, k = divmod(step, self.steps_per_epoch)
        return self.epoch(e)[k * self.micro_per_step : (k + 1) * self.micro_per_step]


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop checks it between optimizer steps."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, object] = {}

    def install(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: give up on the graceful stop
        self.signal = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


def _memory() -> dict[str, float]:
    import resource

    import torch

    out = {"rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
    )


def run_training(config: TrainConfig, *, resume: bool = False, callbacks: Iterable[Callback] = ()) -> RunResult:
    """Train as configured; every process of a run calls this. Events go to RUN_DIR/events.jsonl
    (main process) and to `callbacks`."""
    config.validate()
    quiet_libraries()
    run_dir = Path(config.out)
    setup = build_accelerator(config)
    accelerator = setup.accelerator
    main = accelerator.is_main_process
    writer = EventWriter(run_dir) if main else None
    callbacks = list(callbacks)

    def emit(event: TrainEvent) -> None:
        if writer is None:
            return
        writer.emit(event)
        for cb in callbacks:
            cb(event)

    stop = _StopFlag()
    stop.install()
    progress = {"step": -1}  # -1: still loading
    try:
        return _train(config, accelerator, run_dir, resume, emit, stop, progress)
    except FireflyError as e:
        emit(ErrorEvent(message=e.message, hint=e.hint, step=progress["step"] + 1 if progress["step"] >= 0 else None))
        raise
    except BaseException as e:
        tb = traceback.format_exc().splitlines()[-15:]
        if _is_oom(e):
            where = f"at step {progress['step'] + 1}" if progress["step"] >= 0 else "while loading"
            err = OutOfMemoryError(
                f"out of memory {where} (batch size {config.batch_size}, max length {config.max_length})",
                OOM_SUGGESTIONS,
            )
            emit(ErrorEvent(message=err.message, hint=err.hint, step=progress["step"] + 1, traceback=tb))
            raise err from None
        if isinstance(e, KeyboardInterrupt):
            emit(ErrorEvent(message="interrupted twice: stopped without a checkpoint", traceback=tb))
        else:
            emit(ErrorEvent(message=f"{e.__class__.__name__}: {e}", traceback=tb))
        raise
    finally:
        stop.restore()
        if writer:
            writer.close()
        setup.release()


def _train(config, accelerator, run_dir: Path, resume: bool, emit, stop: _StopFlag, progress: dict) -> RunResult:
    import torch
    from accelerate.utils import set_seed
    from transformers import AutoModelForCausalLM, get_scheduler

    from ..formats import resolve_format
    from ..models.folder import check_model_folder
    from ..models.inventory import resolve_model_path
    from ..models.loading import load_tokenizer
    from .final import save_final_model
    from .lora import ADAPTER_DIR, apply_lora
    from .methods import Method, load_data
    from .run_dir import FINAL_DIR

    main = accelerator.is_main_process
    world = accelerator.num_processes
    rank = accelerator.process_index
    started = time.time()

    # ---- data, rendered with the model's prompt format (the one chat uses)
    model_path = resolve_model_path(config.model)
    base_cfg = check_model_folder(model_path)
    tokenizer = load_tokenizer(model_path, config.trust_remote_code)
    fmt = resolve_format(tokenizer, config.prompt_format, prompt_format_for(config.model))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = load_data(config, fmt, tokenizer)
    train_set, eval_set = data.train, data.eval
    method = Method(config, pad_id)
    plan = Plan([len(t.input_ids) for t in train_set], config.batch_size, config.grad_accum * world, config.seed)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * plan.steps_per_epoch))
    warmup = config.warmup_steps if config.warmup_steps is not None else min(3000, math.ceil(0.03 * total_steps))

    # ---- model, optimizer, schedule
    set_seed(config.seed)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.float32, trust_remote_code=config.trust_remote_code
    )
    if config.train_embeddings_only:
        _embeddings_only(model)
    method.prepare_model(model, accelerator, train_set)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if config.lora:
        if config.gradient_checkpointing:
            model.enable_input_require_grads()
        model = apply_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2), weight_decay=config.weight_decay
    )
    scheduler = get_scheduler(config.schedule, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler is ours to step once per optimizer step (accelerate's wrapper would step it
    # once per process); registering it puts it in checkpoints.
    accelerator.register_for_checkpointing(scheduler)
    if method.reference is not None:
        method.reference.place()
        method.reference.precompute(model, train_set + eval_set, config.batch_size, method.collate)

    start_step = 0
    resumed_from = None
    notes: list[str] = list(data.start.get("notes", []))
    if resume:
        ckpt, state, resume_notes = _resume_from(accelerator, run_dir)
        notes += resume_notes
        start_step = int(state["step"])
        resumed_from = str(ckpt)
    accelerator.step = 0  # accumulation counter: each optimizer step is exactly grad_accum micro-batches

    emit(StartEvent(
        pid=os.getpid(),
        run_dir=str(run_dir),
        config=config.to_dict(),
        prompt_format=fmt.name,
        start_step=start_step,
        resumed_from=resumed_from,
        total_steps=total_steps,
        steps_per_epoch=plan.steps_per_epoch,
        warmup_steps=warmup,
        world_size=world,
        **{k: v for k, v in data.start.items() if k != "notes"},
        trainable_params=sum(p.numel() for p in params),
        device=str(accelerator.device),
        mixed_precision=str(accelerator.mixed_precision),
        distributed=str(accelerator.distributed_type),
        notes=notes,
    ))

    device = accelerator.device
    losses: dict[int, float] = {}
    last_eval = None
    session_start = time.time()
    done_steps = 0
    checkpoint = None
    step = start_step
    before = None  # pretraining: perplexity on the eval set before the first step
    if config.method == "pretrain" and eval_set and start_step == 0:
        ev = evaluate(model, accelerator, eval_set, config.batch_size, method)
        before = _eval_event(0, ev, eval_set, config)
        emit(before)
    elif config.method == "pretrain" and eval_set:  # resumed: the run measured it when it started
        before = next((e for e in read_events(run_dir) if isinstance(e, EvalEvent) and e.step == 0), None)
    model.train()
    while step < total_steps:
        progress["step"] = step
        t0 = time.time()
        batches = plan.step_batches(step)
        n_global = sum(method.weight(train_set[i]) for b in batches for i in b)
        mine = batches[rank::world]
        loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        metric_sum = torch.zeros(method.metrics, device=device, dtype=torch.float32)
        computed = real = 0  # tokens through the model, and of those the non-padding ones
        grad_norm = None
        for b in mine:
            batch = {k: v.to(device) for k, v in method.collate([train_set[i] for i in b]).items()}
            computed += batch["input_ids"].numel()
            real += int(batch["attention_mask"].sum())
            with accelerator.accumulate(model):
                batch_loss_sum, metrics = method.loss_sum(model, batch)
                # Sum over tokens (pairs for DPO) / all of the step's; times grad_accum (undone by
                # accelerate/DeepSpeed) and world size (undone by the DDP/ZeRO gradient mean).
                accelerator.backward(batch_loss_sum * (config.grad_accum * world / max(1, n_global)))
                loss_sum += batch_loss_sum.detach().float()
                if metrics is not None:
                    metric_sum += metrics
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(params if not config.deepspeed else model.parameters(), config.max_grad_norm)
                    grad_norm = float(norm) if norm is not None else None
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        done_steps += 1
        loss = float(accelerator.reduce(loss_sum, reduction="sum")) / max(1, n_global)
        computed_t, real_t = accelerator.reduce(torch.tensor([computed, real], device=device), reduction="sum").tolist()
        rewards = reward_fields(accelerator.reduce(metric_sum, reduction="sum").tolist(), n_global) if method.metrics else {}
        losses[step] = loss
        if not math.isfinite(loss):
            raise FireflyError(
                f"the loss became {loss} at step {step}",
                "lower --lr, use --precision bf16 instead of fp16, or check the data",
            )
        now = time.time()
        if step % config.log_every == 0 or step == total_steps or step == start_step + 1:
            elapsed = now - session_start
            emit(StepEvent(
                step=step,
                total=total_steps,
                epoch=round(step / plan.steps_per_epoch, 4),
                loss=round(loss, 6),
                lr=scheduler.get_last_lr()[0],
                grad_norm=None if grad_norm is None else round(grad_norm, 6),
                supervised_tokens=n_global,
                computed_tokens=int(computed_t),
                padding_tokens=int(computed_t - real_t),
                tokens_per_s=round(n_global / max(1e-9, now - t0), 2),
                elapsed=round(now - started, 3),
                eta=round(elapsed / done_steps * (total_steps - step), 1),
                memory=_memory(),
                **rewards,
            ))
        eval_every = config.eval_every or config.save_every
        if eval_set and (step % eval_every == 0 or step == total_steps):
            ev = evaluate(model, accelerator, eval_set, config.batch_size, method)
            last_eval = _eval_event(step, ev, eval_set, config)
            emit(last_eval)
            model.train()
        stopping = _agreed_stop(accelerator, stop)
        if step % config.save_every == 0 or stopping or step == total_steps:
            checkpoint = save_checkpoint(
                accelerator, run_dir, step,
                {"epoch": step // plan.steps_per_epoch, "index_in_epoch": step % plan.steps_per_epoch,
                 "total_steps": total_steps, "loss": loss, "time": time.time()},
                config.keep_checkpoints,
            )
            emit(CheckpointEvent(step=step, path=str(checkpoint)))
        if stopping:
            name = signal.Signals(stop.signal).name if stop.signal else "signal"
            emit(DoneEvent(status="stopped", step=step, total=total_steps, signal=name, checkpoint=str(checkpoint),
                           message=f"stopped by {name} at step {step}; resume it to continue from this checkpoint"))
            return RunResult("stopped", step, total_steps, None, checkpoint, losses)

    # ---- the final model folder
    final = run_dir / FINAL_DIR
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model) if config.deepspeed == 3 else None
    if main:
        unwrapped = accelerator.unwrap_model(model)
        if config.lora:
            unwrapped.save_pretrained(run_dir / ADAPTER_DIR)
            tokenizer.save_pretrained(run_dir / ADAPTER_DIR)
            unwrapped = unwrapped.merge_and_unload()
        save_final_model(unwrapped, state_dict, tokenizer, fmt, model_path, final, base_cfg)
    accelerator.wait_for_everyone()
    last = losses.get(step)
    emit(DoneEvent(status="completed", step=step, total=total_steps, final_path=str(final),
                   elapsed=round(time.time() - started, 3), last_loss=None if last is None else round(last, 6),
                   message=_perplexity_note(before, last_eval, config)))
    accelerator.end_training()
    return RunResult("completed", step, total_steps, final, checkpoint, losses)


def _resume_from(accelerator, run_dir: Path):
    """Load the newest checkpoint that loads; a damaged newer one is skipped and named in the
    returned notes (shown by the CLI and the app). Every process loads the same one."""
    from ..errors import ConfigError

    notes: list[str] = []
    found = list_checkpoints(run_dir)
    for ckpt in reversed(found):
        try:
            return ckpt, load_checkpoint(accelerator, ckpt), notes
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # a truncated or corrupt file: try the previous checkpoint
            reason = str(e).splitlines()[0][:200] if str(e) else e.__class__.__name__
            notes.append(f"checkpoint {ckpt.name} is damaged ({reason}); resuming from an earlier one")
    if not found:
        raise ConfigError(f"nothing to resume: {run_dir} has no checkpoint", "start without --resume")
    raise ConfigError(
        f"no checkpoint of {run_dir} could be loaded: " + "; ".join(notes),
        "start the run again without --resume in a new --out folder",
    )


def _agreed_stop(accelerator, stop: _StopFlag) -> bool:
    """Whether any process was asked to stop (all must checkpoint together)."""
    if accelerator.num_processes == 1:
        return stop.signal is not None
    import torch

    flag = torch.tensor(1 if stop.signal is not None else 0, device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum") > 0)


def _embeddings_only(model) -> None:
    """Freeze everything but the input embeddings and the output head (tied or not)."""
    model.requires_grad_(False)
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is not None:
            module.weight.requires_grad_(True)


def _eval_event(step: int, loss: float, eval_set, config) -> EvalEvent:
    """Perplexity is exp(mean token loss): meaningless for DPO's pair loss, so None there."""
    ppl = None if config.method == "dpo" else round(math.exp(min(loss, 50)), 4)
    return EvalEvent(step=step, loss=round(loss, 6), perplexity=ppl, samples=len(eval_set))


def _perplexity_note(before: EvalEvent | None, after: EvalEvent | None, config) -> str | None:
    """The run's closing note for pretraining: held-out perplexity before and after."""
    if before is None or after is None or before.perplexity is None or after.perplexity is None:
        return None
    where = config.eval_file or "the held-out documents"
    return f"perplexity on {where}: {before.perplexity:.2f} before, {after.perplexity:.2f} after"


def evaluate(model, accelerator, eval_set, batch_size: int, method) -> float:
    """Mean loss per averaging unit (supervised token, or pair for DPO) over the eval set (split
    across processes)."""
    import torch

    model.eval()
    order = sorted(range(len(eval_set)), key=lambda i: len(eval_set[i].input_ids))
    batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
    total = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    world, rank = accelerator.num_processes, accelerator.process_index
    rounds = math.ceil(len(batches) / world)
    with torch.no_grad():
        # Every process runs the same number of forwards (ZeRO-3 gathers weights collectively);
        # a process without a batch left repeats the first one and does not count it.
        for r in range(rounds):
            k = r * world + rank
            b = batches[k] if k < len(batches) else batches[0]
            batch = {key: v.to(accelerator.device) for key, v in method.collate([eval_set[i] for i in b]).items()}
            loss = float(method.loss_sum(model, batch)[0])
            if k < len(batches):
                total[0] += loss
                total[1] += sum(method.weight(eval_set[i]) for i in b)
    total = accelerator.reduce(total, reduction="sum")
    return float(total[0] / max(1.0, float(total[1])))
