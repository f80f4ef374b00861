"""The training configuration: one dataclass, loaded from defaults < train.toml < command line.

Defaults follow the Firefly recipe (the seeds): batch 16, lr 3e-5, 3000 warmup steps, cosine
schedule, max length 512. The resolved config is saved as RUN_DIR/train_config.json.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import ConfigError

CONFIG_FILE = "train_config.json"
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
METHODS = ("sft", "dpo", "pretrain")
DPO_LOSSES = ("sigmoid", "ipo")
SCHEDULES = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
# Options that may differ when resuming (they do not change what was already computed).
RESUME_OVERRIDABLE = {"max_steps", "epochs", "save_every", "eval_every", "keep_checkpoints", "log_every"}


@dataclass
class TrainConfig:
    model: str = ""
    data: list[str] = field(default_factory=list)
    out: str = ""
    # what is trained: "sft" (answers of instruction data), "dpo" (preference pairs), "pretrain"
    # (every token of raw text, documents packed to max_length)
    method: str = "sft"
    packing: bool = False  # several samples per row, each attending only to itself (sft, pretrain)
    beta: float = 0.1  # DPO: strength of the pull towards the reference model
    loss: str = "sigmoid"  # DPO loss: "sigmoid" (DPO) or "ipo"
    precompute_ref: bool = False  # DPO: reference log-probs computed once before training (no copy kept)
    train_embeddings_only: bool = False  # train only the input embeddings and the output head
    prompt_format: str | None = None  # None: the model's own (as chat resolves it)
    # schedule of work
    epochs: float = 1.0
    max_steps: int | None = None  # wins over epochs
    batch_size: int = 16  # samples per device per micro-batch
    grad_accum: int = 1
    max_length: int = 512
    # optimizer
    lr: float = 3e-5
    warmup_steps: int | None = None  # None: 3000 (recipe), at most 3% of the run's steps
    schedule: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    seed: int = 42
    # evaluation and saving
    eval_file: str | None = None
    eval_fraction: float = 0.0
    eval_every: int | None = None  # None: with every checkpoint
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 1
    strict: bool = False
    # device and memory
    gpu: str = "0"  # "0", "0,1", "cpu"
    num_processes: int | None = None  # several processes on `--gpu cpu` (tests the multi-device path)
    precision: str = "auto"
    gradient_checkpointing: bool = False
    deepspeed: int | None = None  # ZeRO stage 2 or 3; None: no DeepSpeed (DDP when several devices)
    offload: bool = False  # ZeRO CPU offload of optimizer (and parameters with stage 3)
    # several machines (accelerate's own options)
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None
    # LoRA
    lora: bool = False
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None  # None: all linear layers except lm_head
    trust_remote_code: bool = False

    def validate(self) -> "TrainConfig":
        if not self.model:
            raise ConfigError("no model given", "pass --model PATH_OR_ID")
        if not self.data:
            raise ConfigError("no data given", "pass --data FILE.jsonl")
        if not self.out:
            raise ConfigError("no run folder given", "pass --out RUN_DIR")
        for name in ("batch_size", "grad_accum", "max_length", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("--max-steps must be at least 1")
        if self.epochs <= 0:
            raise ConfigError("--epochs must be positive")
        if self.lr <= 0:
            raise ConfigError("--lr must be positive")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}", f"choose one of: {', '.join(PRECISIONS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}", f"choose one of: {', '.join(SCHEDULES)}")
        if self.deepspeed not in (None, 2, 3):
            raise ConfigError(f"--deepspeed takes the ZeRO stage 2 or 3, not {self.deepspeed}")
        if self.offload and self.deepspeed is None:
            raise ConfigError("--offload needs DeepSpeed", "add --deepspeed 2 or --deepspeed 3")
        if not 0 <= self.eval_fraction < 1:
            raise ConfigError("--eval-fraction must be in [0, 1)")
        if self.lora and self.deepspeed == 3:
            raise ConfigError("LoRA with ZeRO-3 is not supported here", "use --deepspeed 2 with --lora")
        self._validate_method()
        self.devices()  # validates gpu
        return self

    def _validate_method(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}", f"choose one of: {', '.join(METHODS)}")
        if self.method != "dpo":
            for name in ("precompute_ref",):
                if getattr(self, name):
                    raise ConfigError(f"--{name.replace('_', '-')} is for --method dpo")
            if self.loss != "sigmoid":
                raise ConfigError("--loss is for --method dpo")
        if self.loss not in DPO_LOSSES:
            raise ConfigError(f"unknown DPO loss {self.loss!r}", f"choose one of: {', '.join(DPO_LOSSES)}")
        if self.beta <= 0:
            raise ConfigError("--beta must be positive")
        if self.method == "dpo" and self.packing:
            raise ConfigError(
                "--packing is for --method sft and pretrain",
                "a preference pair is trained as two rows (chosen, rejected); drop --packing",
            )
        if self.precompute_ref and self.lora:
            raise ConfigError(
                "--precompute-ref is not needed with --lora",
                "with LoRA the reference is the model with its adapter switched off (no copy); drop one of them",
            )
        if self.train_embeddings_only and self.lora:
            raise ConfigError("--train-embeddings-only and --lora exclude each other", "choose one of them")

    def devices(self) -> list[str]:
        """["cpu"] or the CUDA indices as strings."""
        g = str(self.gpu).strip().lower()
        if g == "cpu":
            return ["cpu"]
        parts = [p.strip() for p in g.split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            raise ConfigError(f"--gpu {self.gpu!r} is not understood", "use 0, 0,1 or cpu")
        return parts

    @property
    def world_size(self) -> int:
        per_machine = self.num_processes or (1 if self.devices() == ["cpu"] else len(self.devices()))
        return per_machine * self.num_machines

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / CONFIG_FILE, self.to_dict())


def _type_error(key: str, hint: Any, value: Any) -> str | None:
    """Why `value` does not fit the field type `hint`, or None when it does."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        want = "a list of strings"
    elif hint is bool:
        ok, want = isinstance(value, bool), "true or false"
    elif hint is int:
        ok, want = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif hint is float:
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif hint is str:
        ok, want = isinstance(value, str), "a string"
    else:
        return None
    if ok:
        return None
    shown = json.dumps(value, default=str)
    return f"{key} must be {want}, not {shown[:60]}"


def _coerce(values: dict[str, Any], source: str) -> dict[str, Any]:
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"{source}: unknown option {key!r}", "see: firefly train --help")
        if name == "data" and isinstance(value, str):
            value = [value]
        if name == "gpu" and isinstance(value, (int, str)) and not isinstance(value, bool):
            value = str(value)
        problem = _type_error(key, hints[name], value)
        if problem:
            raise ConfigError(f"{source}: {problem}", "see: firefly train --help for each option's type")
        out[name] = value
    return out


def load_config(toml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the TOML file (same keys as the options, `-` or `_`), then `overrides`
    (options given on the command line; None values mean "not given")."""
    values: dict[str, Any] = {}
    if toml_path:
        path = Path(toml_path)
        hint = "give a train.toml file with the same keys as the options (see: firefly train --help)"
        if path.is_dir():
            raise ConfigError(f"--config {path} is a folder, not a TOML file", hint)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"no config file at {path}", hint) from None
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}", hint) from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})",
                              "save it as UTF-8") from None
        try:
            values.update(_coerce(tomllib.loads(text), str(path)))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from None
        except RecursionError:
            raise ConfigError(f"{path} is not valid TOML: nested too deeply") from None
    values.update(_coerce({k: v for k, v in (overrides or {}).items() if v is not None}, "command line"))
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise ConfigError(f"bad training configuration: {e}") from None


def load_saved(run_dir: Path) -> TrainConfig:
    """The resolved config a run saved (for --resume and for workers of a multi-process run)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no {CONFIG_FILE}, so it is not a training run folder")
    try:
        data = json.loads(path.read_text("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**_coerce({k: v for k, v in data.items() if k in known}, str(path)))
    except (ValueError, RecursionError, TypeError) as e:
        raise ConfigError(f"{path} is damaged: {e}", "start a new run in another --out folder") from None
