"""accelerate / DeepSpeed set-up: the Accelerator of one process, the generated ZeRO and accelerate
launch configs, the worker command line, and leaving the process as it was found.

Both `launch` (the parent, which writes the configs and starts workers) and `loop` (every process,
which builds its Accelerator) use this module; neither imports the other for it. The environment
variables a one-process DeepSpeed run needs are returned with the Accelerator and removed by
`release`, so nothing is kept in module-level state.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..extras import install_hint, require_extra
from .config import TrainConfig

DEEPSPEED_HINT = install_hint("deepspeed")
DS_CONFIG_FILE = "deepspeed_config.json"
ACCELERATE_CONFIG_FILE = "accelerate_config.yaml"


def require_deepspeed() -> None:
    """--deepspeed without the extra: `extras`' one message, before anything is made."""
    require_extra("deepspeed")


def resolve_precision(precision: str, cuda: bool) -> str:
    """accelerate's mixed_precision for our --precision (auto: bf16/fp16 on GPUs, fp32 on CPU)."""
    if precision == "auto":
        if cuda:
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "no"
    return {"fp32": "no"}.get(precision, precision)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def yaml_text(cfg: dict[str, Any]) -> str:
    """JSON values are valid YAML; nested dicts are written as flow mappings."""
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in cfg.items())


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
               "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={config.main_process_port or free_port()}"]
        return cmd + tail, env
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(run_dir / ACCELERATE_CONFIG_FILE)]
    return cmd + tail, env


def write_launch_configs(config: TrainConfig, run_dir: Path) -> None:
    """RUN_DIR/accelerate_config.yaml (and deepspeed_config.json) for a multi-GPU run."""
    from ..atomic import write_json, write_text

    if config.devices() == ["cpu"]:
        return
    mp = resolve_precision(config.precision, True)
    if config.deepspeed:
        write_json(run_dir / DS_CONFIG_FILE, deepspeed_config(config, mp))
    write_text(run_dir / ACCELERATE_CONFIG_FILE, yaml_text(accelerate_config(config, mp)))


@dataclass
class ProcessSetup:
    """This process's Accelerator and what was changed to build it (undone by `release`)."""

    accelerator: Any
    added_env: tuple[str, ...] = ()

    def release(self) -> None:
        """Leave the process as we found it, so another run can start in it (tests, notebooks):
        accelerate's state is a process-wide singleton, and a one-process DeepSpeed run opened a
        process group of its own."""
        if self.accelerator is None or self.accelerator.num_processes != 1:
            return
        import torch.distributed as dist
        from accelerate.state import AcceleratorState

        for key in self.added_env:
            os.environ.pop(key, None)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
            ds_comm = sys.modules.get("deepspeed.comm.comm")
            if ds_comm is not None:
                ds_comm.cdb = None  # DeepSpeed's handle on the group just destroyed
        AcceleratorState._reset_state(reset_partial_state=True)


def _deepspeed_plugin(config: TrainConfig, mixed_precision: str) -> tuple[Any, tuple[str, ...]]:
    """accelerate's DeepSpeedPlugin for this run, and the environment variables set for it."""
    require_deepspeed()
    from accelerate.utils import DeepSpeedPlugin

    added: dict[str, str] = {}
    if config.devices() == ["cpu"] and "DS_ACCELERATOR" not in os.environ:
        added["DS_ACCELERATOR"] = "cpu"
    # One process still needs a process group: give it the torchrun-style variables.
    if "RANK" not in os.environ:
        added.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    os.environ.update(added)
    return DeepSpeedPlugin(hf_ds_config=deepspeed_config(config, mixed_precision)), tuple(added)


def build_accelerator(config: TrainConfig) -> ProcessSetup:
    """The Accelerator of this process: device, mixed precision, accumulation, DeepSpeed."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    cpu = config.devices() == ["cpu"]
    mp = resolve_precision(config.precision, not cpu and torch.cuda.is_available())
    plugin, added = _deepspeed_plugin(config, mp) if config.deepspeed else (None, ())
    try:
        accelerator = Accelerator(
            # DeepSpeed picks its own device (DS_ACCELERATOR=cpu on CPU); accelerate's cpu flag
            # would silently bypass it.
            cpu=cpu and plugin is None,
            mixed_precision=mp,
            gradient_accumulation_steps=config.grad_accum,
            deepspeed_plugin=plugin,
            dataloader_config=DataLoaderConfiguration(),
        )
    except BaseException:
        for key in added:
            os.environ.pop(key, None)
        raise
    return ProcessSetup(accelerator, added)
