"""Launching a run: one device in this process; several through `accelerate launch` (GPUs, machines)
or torchrun (`--gpu cpu --num-processes N`, gloo), with generated DeepSpeed / accelerate configs.

Every process runs the same `run_training`; the parent of a multi-process run only tails
events.jsonl for the console and forwards Ctrl-C to the workers, which checkpoint and stop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from ..atomic import write_json, write_text
from ..errors import ConfigError, FireflyError
from .config import TrainConfig, load_saved
from .events import EventTail, TrainEvent

SINGLE_PROCESS_ENV: list[str] = []
DEEPSPEED_HINT = "pip install 'firefly-tui[deepspeed]'"
DS_CONFIG_FILE = "deepspeed_config.json"
ACCELERATE_CONFIG_FILE = "accelerate_config.yaml"


def require_deepspeed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError("DeepSpeed is not installed (asked for by --deepspeed)", DEEPSPEED_HINT) from None


def deepspeed_config(config: TrainConfig, mixed_precision: str) -> dict[str, Any]:
    """A ZeRO config for this run. Our torch AdamW is the client optimizer (no compiled DeepSpeed
    ops needed; with offload DeepSpeed's CPU Adam would be faster but needs a compiler)."""
    zero: dict[str, Any] = {
        "stage": config.deepspeed,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e7,
    }
    if config.deepspeed == 2:
        zero["allgather_bucket_size"] = 5e7
    if config.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if config.deepspeed == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if config.deepspeed == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "gradient_clipping": config.max_grad_norm,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": mixed_precision == "bf16"},
        "fp16": {"enabled": mixed_precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_plugin(config: TrainConfig, mixed_precision: str):
    """accelerate's DeepSpeedPlugin for this run (the same in one process and in each worker)."""
    require_deepspeed()
    from accelerate.utils import DeepSpeedPlugin

    if config.devices() == ["cpu"]:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # One process still needs a process group: give it the torchrun-style variables.
    if "RANK" not in os.environ:
        added = dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        os.environ.update(added)
        SINGLE_PROCESS_ENV.extend(added)  # removed again when the run ends (loop._release)
    return DeepSpeedPlugin(hf_ds_config=deepspeed_config(config, mixed_precision))


def accelerate_config(config: TrainConfig, mixed_precision: str = "no") -> dict[str, Any]:
    """The accelerate launch config for a multi-GPU / multi-machine run (YAML-compatible JSON);
    `mixed_precision` must be what the workers resolve, since accelerate checks they agree."""
    devices = config.devices()
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "DEEPSPEED" if config.deepspeed else "MULTI_GPU",
        "num_processes": config.world_size,
        "num_machines": config.num_machines,
        "machine_rank": config.machine_rank,
        "gpu_ids": ",".join(devices),
        "mixed_precision": mixed_precision,
        "rdzv_backend": "static",
        "same_network": True,
        "main_training_function": "main",
        "use_cpu": False,
    }
    if config.main_process_ip:
        cfg["main_process_ip"] = config.main_process_ip
    cfg["main_process_port"] = config.main_process_port or 29500
    if config.deepspeed:
        cfg["deepspeed_config"] = {
            "deepspeed_config_file": str(Path(config.out).resolve() / DS_CONFIG_FILE),
            "zero3_init_flag": False,
        }
    return cfg


def worker_command(config: TrainConfig, resume: bool) -> tuple[list[str], dict[str, str]]:
    """The command line that starts every process of a multi-process run, and its environment."""
    run_dir = Path(config.out).resolve()
    env = dict(os.environ)
    tail = ["-m", "firefly_core.training.worker", str(run_dir)] + (["--resume"] if resume else [])
    if config.devices() == ["cpu"]:
        # accelerate launch has no multi-process CPU mode without MPI; torchrun's static
        # rendezvous is what it would use under the hood, with gloo picked by accelerate.
        env.setdefault("OMP_NUM_THREADS", "1")
        if config.deepspeed:
            env["DS_ACCELERATOR"] = "cpu"
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={config.world_size}",
               "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={config.main_process_port or _free_port()}"]
        return cmd + tail, env
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(run_dir / ACCELERATE_CONFIG_FILE)]
    return cmd + tail, env


def _yaml(cfg: dict[str, Any]) -> str:
    # JSON values are valid YAML; nested dicts are written as flow mappings.
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items())


def prepare_run_dir(config: TrainConfig, resume: bool) -> TrainConfig:
    """Create RUN_DIR and save the resolved config (refusing to mix a new run into an old one)."""
    run_dir = Path(config.out)
    if resume:
        return config
    if (run_dir / "events.jsonl").exists():
        raise ConfigError(
            f"{run_dir} already holds a training run",
            "continue it with --resume, or choose another --out folder",
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    config.save(run_dir)
    return config


def resolve_resume(config_overrides: dict[str, Any], run_dir: Path) -> TrainConfig:
    """The saved config of `run_dir`, with the options that may change on resume applied."""
    from .config import RESUME_OVERRIDABLE

    saved = load_saved(run_dir)
    ignored = []
    for key, value in config_overrides.items():
        if value is None or key in ("out", "config"):
            continue
        if key in RESUME_OVERRIDABLE:
            setattr(saved, key, value)
        elif getattr(saved, key, value) != value:
            ignored.append(key)
    if ignored:
        raise ConfigError(
            f"--resume continues the saved run; these options differ from it: {', '.join(sorted(ignored))}",
            f"drop them (only {', '.join(sorted(RESUME_OVERRIDABLE))} may change), or start a new run",
        )
    saved.out = str(run_dir)
    saved.save(run_dir)
    return saved


def launch(config: TrainConfig, *, resume: bool = False, callbacks: Iterable[Callable[[TrainEvent], None]] = ()):
    """Run training on the configured devices; returns the in-process `RunResult` or, for
    several processes, the final status from events.jsonl ("completed" | "stopped")."""
    config.validate()
    if config.deepspeed:
        require_deepspeed()
    _check_gpus(config)
    prepare_run_dir(config, resume)
    if config.world_size == 1 and config.num_machines == 1:
        from .loop import run_training

        if config.devices() != ["cpu"]:
            os.environ.setdefault("CUDA_VISIBLE_DEVICES", config.devices()[0])
        return run_training(config, resume=resume, callbacks=callbacks)
    return _launch_processes(config, resume, list(callbacks))


def _children(pid: int) -> list[int]:
    """Descendants of `pid` (Linux /proc; empty elsewhere)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    kids = [int(k) for k in text.split()]
    return kids + [g for k in kids for g in _children(k)]


def _signal_workers(launcher_pid: int, signum: int) -> None:
    """Send `signum` to the launcher's workers, not to the launcher: the workers checkpoint and
    exit 0, and torchrun / accelerate then end normally instead of tearing them down (torch
    elastic starts workers in sessions of their own, so a process-group signal misses them).
    Where /proc is missing, the launcher gets it and forwards it itself."""
    pids = _children(launcher_pid)
    try:
        for pid in pids or [launcher_pid]:
            os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _check_gpus(config: TrainConfig) -> None:
    if config.devices() == ["cpu"]:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--gpu {config.gpu} asked for, but CUDA is not available here", "use --gpu cpu")
    visible = torch.cuda.device_count()
    missing = [d for d in config.devices() if int(d) >= visible and "CUDA_VISIBLE_DEVICES" not in os.environ]
    if missing:
        raise ConfigError(f"no GPU {', '.join(missing)} on this machine ({visible} visible)", "see nvidia-smi")


def _launch_processes(config: TrainConfig, resume: bool, callbacks: list) -> str:
    run_dir = Path(config.out).resolve()
    if config.devices() != ["cpu"]:
        from .loop import resolve_precision

        mp = resolve_precision(config.precision, True)
        if config.deepspeed:
            write_json(run_dir / DS_CONFIG_FILE, deepspeed_config(config, mp))
        write_text(run_dir / ACCELERATE_CONFIG_FILE, _yaml(accelerate_config(config, mp)))
    cmd, env = worker_command(config, resume)
    tail = EventTail(run_dir)
    tail.offset = (run_dir / "events.jsonl").stat().st_size if (run_dir / "events.jsonl").exists() else 0
    # Own session: Ctrl-C reaches only us, and we hand it to the whole worker group once.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    forwarded = []

    def forward(signum, frame):
        if forwarded and signum == signal.SIGINT:
            os.killpg(proc.pid, signal.SIGKILL)
            return
        forwarded.append(signum)
        _signal_workers(proc.pid, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    status = None
    error: TrainEvent | None = None
    try:
        while True:
            finished = proc.poll() is not None  # checked first, so the last poll sees every event
            for event in tail.poll():
                for cb in callbacks:
                    cb(event)
                if event.type == "done":
                    status = event.data.get("status")
                elif event.type == "error":
                    error = event
            if finished:
                break
            time.sleep(0.2)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if status is None and error is not None:
        raise FireflyError(error.data.get("message", "training failed"), error.data.get("hint"))
    if status is None:
        raise FireflyError(
            f"the training processes exited with status {proc.returncode} before finishing",
            f"see the error above and {run_dir / 'events.jsonl'}",
        )
    return status
