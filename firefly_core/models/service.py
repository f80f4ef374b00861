"""The model service: the one owner of loaded models in this process.

Every front end (`firefly chat`, the app, the API server) gets its models here, never from
`load_model` directly, because loading is not thread-safe (transformers patches process-wide torch
state) and because preparing a model for chat (device and dtype, int8 weights, llama.cpp, CUDA-graph
capture, the CPU kernels, the decode thread count) must happen once, the same way for all of them.

- `get(request)` is serialized by one lock: a second request for the same model waits for the first
  and gets the same object; a request for another model waits its turn. A waiting or running load
  can be cancelled (`cancel` event), checked between steps.
- Each step is reported as a `LoadStatus` ("compiling CPU kernels, once, ~30 s") that the CLI and
  the app show as-is.
- `generation_lock(lm)`: one generation at a time per model (a decoder's cache and sampling state
  are not shareable between two replies running at once).
- Only the two most recently used models stay loaded (a user switching models in the app should not
  hold every model they ever opened in memory); `unload()` frees them explicitly.

This module imports no torch at import time: the UI imports `ModelRequest` and `LoadStatus`.
"""

from __future__ import annotations

import gc
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from ..errors import ConfigError, FireflyError
from ..quiet import quiet_libraries
from ..setting_spec import include_settings
from .engine_settings import (  # noqa: F401 (the engine choices, re-exported)
    ENGINES,
    LLAMACPP_QUANTIZE,
    QUANTIZE_CHOICES,
    TORCH_QUANTIZE,
    ENGINE_KEYS,
    EngineSettings,
    check_engine_settings,
)
from .names import check_model_name

KEEP_LOADED = 2  # models kept after use (least recently used is dropped first)
# Below this many bytes of weights read per token, one decode thread is fastest: the work per
# step is too small to split, and on a busy machine OpenMP's spinning workers made a tiny model
# decode ~20x slower with 2 threads than with 1 (measured in bench/threads.py).
SMALL_MODEL_BYTES = 64 * 1024 * 1024


class LoadCancelled(FireflyError):
    """A load was cancelled before it finished (nothing is kept)."""


@dataclass(frozen=True)
@include_settings((EngineSettings, None))
class ModelRequest:
    """What to load and how; None fields mean "the automatic choice". After the fields below come
    the declared engine settings (engine, quantize, cuda_graph, threads: models/engine_settings.py),
    checked by the same rule that guards the saved settings."""

    model: str  # folder or hub id, as the user gave it
    device: str | None = None
    dtype: str | None = None
    prompt_format: str | None = None
    trust_remote_code: bool = False

    def validate(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError("no model given", "pass a model folder or a downloaded hub id")
        check_model_name(self.model, where="model")
        check_engine_settings(self)


@dataclass(frozen=True)
class LoadStatus:
    """One step of a load, shown by the CLI and the app as-is."""

    model: str
    step: str  # "load" | "quantize" | "llamacpp" | "cuda_graph" | "kernels" | "threads" | "ready"
    message: str


StatusCallback = Callable[[LoadStatus], None]


def default_threads(lm: Any, sample: Callable[[], Any] | None = None) -> int:
    """Decode threads when nobody chose (`--threads` and the per-model setting win).

    Measured (`python bench/threads.py`, 2-core machine shared with other work): a tiny model
    decodes ~20x slower with 2 threads than with 1, and even the firefly-1b4 shape several times
    slower when the other core is busy: OpenMP workers spin waiting for a core that is not free.
    So: 1 thread for small models (SMALL_MODEL_BYTES); otherwise one per physical core this
    process may use, less the CPUs other processes hold *now* (`cpu_use.sample_cpu_use`, a 0.1 s
    sample, our own process left out), at least 1. The 1-minute load average this replaced was
    history: a machine busy a minute ago decoded on 1 thread at 0.65x (issue 24).
    `sample` (tests): returns a `cpu_use.CpuSample` instead of sampling the machine.
    """
    from ..cpu_use import free_cpus, sample_cpu_use

    if _weight_bytes(lm) < SMALL_MODEL_BYTES:
        return 1
    return free_cpus((sample or sample_cpu_use)(), _usable_cpus())


def _usable_cpus() -> int:
    """CPUs this process may run on, one per physical core (a second hyper-thread adds nothing to
    a memory-bound decode step; llama.cpp's own default is the physical cores)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        n = os.cpu_count() or 1
    import psutil

    logical, physical = psutil.cpu_count() or n, psutil.cpu_count(logical=False) or n
    return max(1, n * physical // max(logical, 1))


def _weight_bytes(lm: Any) -> int:
    """Bytes of 2-D weights (what a decode step reads), embeddings included (tied heads read them);
    for a model described without its weights (llama.cpp reads the folder), the weight files' size."""
    if lm.model is None:
        from .folder import check_weights

        return sum(f.stat().st_size for f in check_weights(lm.path).files)
    return sum(p.numel() * p.element_size() for p in lm.model.parameters() if p.dim() == 2)


class ModelService:
    """Owns the loaded models of this process; see the module docstring."""

    def __init__(self, keep: int = KEEP_LOADED) -> None:
        self._lock = threading.Lock()  # one load at a time; also guards _models
        self._models: OrderedDict[tuple, Any] = OrderedDict()
        self.keep = keep

    # -- requests -------------------------------------------------------------------------------
    def request_for(self, model: str, **overrides: Any) -> ModelRequest:
        """The request for `model` from the user's saved per-model settings, then `overrides`
        (None = keep the saved value). Unknown names are an error."""
        from .user_settings import load_settings  # read at call time: tests and the app change the home

        names = {f.name for f in fields(ModelRequest)} - {"model"}
        unknown = set(overrides) - names
        if unknown:
            raise ConfigError(f"unknown model option(s): {', '.join(sorted(unknown))}")
        saved = load_settings().for_model(model)
        request = ModelRequest(
            model=str(model),
            prompt_format=saved.prompt_format,
            trust_remote_code=bool(saved.trust_remote_code),
            **{name: getattr(saved, name) for name in ENGINE_KEYS},
        )
        request = replace(request, **{k: v for k, v in overrides.items() if v is not None})
        request.validate()
        return request

    # -- loading --------------------------------------------------------------------------------
    def get(
        self,
        request: ModelRequest | str,
        *,
        status: StatusCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Any:
        """The LoadedModel for `request`, loaded and prepared for chat once, shared by every caller
        that asks for the same thing. Raises LoadCancelled when `cancel` is set before it is ready."""
        if isinstance(request, str):
            request = self.request_for(request)
        request.validate()

        def say(step: str, message: str) -> None:
            if status is not None:
                status(LoadStatus(request.model, step, message))

        def check_cancel() -> None:
            if cancel is not None and cancel.is_set():
                raise LoadCancelled(f"loading {request.model} was cancelled")

        self._acquire(cancel, request)
        try:
            key = self._key(request)
            lm = self._models.get(key)
            if lm is not None:
                self._models.move_to_end(key)
                return lm
            check_cancel()
            lm = self._load(request, say, check_cancel, cancel)
            self._models[key] = lm
            while len(self._models) > max(1, self.keep):
                self._models.popitem(last=False)
            return lm
        finally:
            self._lock.release()

    def generation_lock(self, lm: Any) -> threading.Lock:
        """The lock that keeps generations with `lm` one at a time (held by whoever generates)."""
        return lm.generation_lock

    def loaded(self) -> list[Any]:
        """The models held now, least recently used first."""
        with self._lock:
            return list(self._models.values())

    def unload(self, model: str | None = None) -> None:
        """Forget `model` (every request for it), or every model; memory is freed once no caller
        holds it any more."""
        with self._lock:
            for key in [k for k in self._models if model is None or k[0] == self._model_key(model)]:
                del self._models[key]
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    # -- internals ------------------------------------------------------------------------------
    def _acquire(self, cancel: threading.Event | None, request: ModelRequest) -> None:
        """Take the service lock, giving up if `cancel` is set while another load runs."""
        while not self._lock.acquire(timeout=0.1):
            if cancel is not None and cancel.is_set():
                raise LoadCancelled(f"loading {request.model} was cancelled")

    @staticmethod
    def _model_key(model: str) -> str:
        """Requests name a model by hub id or folder; the same folder is the same model."""
        from .inventory import resolve_model_path

        try:
            return str(resolve_model_path(model).resolve())
        except FireflyError:
            return str(model)

    def _key(self, request: ModelRequest) -> tuple:
        return (self._model_key(request.model),) + tuple(
            getattr(request, f.name) for f in fields(ModelRequest) if f.name != "model"
        )

    def _load(self, request: ModelRequest, say: Callable[[str, str], None], check_cancel, cancel) -> Any:
        from .catalog import prompt_format_for
        from .loading import load_model

        from .loading import pick_device

        quiet_libraries(ui=True)
        # llama.cpp reads the model folder itself: its engine needs no PyTorch copy of the weights
        # (that would double the memory and the wait), only the model's description.
        engine, _why_not = resolve_engine(request, pick_device(request.device).type)
        from ..cpu_use import SampleAhead

        # the decode threads' CPU sample runs while the model is read (0.1 s off the load)
        cpu_sample = SampleAhead().result if request.threads is None else None
        say("load", f"loading {request.model} …")
        lm = load_model(
            request.model,
            device=request.device,
            dtype=request.dtype,
            prompt_format=request.prompt_format,
            catalog_format=prompt_format_for(request.model),
            trust_remote_code=request.trust_remote_code,
            weights=engine != "llamacpp",
        )
        check_cancel()
        prepare_for_chat(lm, request, say, cancel, cpu_sample=cpu_sample)
        check_cancel()
        say("ready", describe(lm))
        return lm


def resolve_engine(request: ModelRequest, device_type: str) -> tuple[str, str | None]:
    """(engine, why not llama.cpp) for a request: llama.cpp when asked, or automatically on CPU and
    Apple GPUs when it is usable and the request asks for nothing only torch does (int8 weights,
    or an explicit dtype with no llama.cpp format: `--dtype fp32` means PyTorch in fp32, not a
    silently quantized llama.cpp model); torch otherwise."""
    if request.engine == "torch":
        return "torch", None
    torch_only = request.quantize in TORCH_QUANTIZE or (request.dtype is not None and request.quantize is None)
    if request.engine is None and (device_type not in ("cpu", "mps") or torch_only):
        return "torch", None
    reason = llamacpp_unavailable()
    if reason is None:
        return "llamacpp", None
    if request.engine == "llamacpp":
        from ..extras import require_extra

        require_extra("llamacpp")  # not installed: the extra's one message, with the install commands
        raise FireflyError(f"the llama.cpp engine is not usable here: {reason}", "use --engine torch")
    return "torch", reason


def prepare_model_files(model: str, *, status: Callable[[str], None] | None = None, cancel=None) -> str | None:
    """Make what the first chat with `model` would otherwise make in the foreground, when the
    model is chosen (`firefly use`, `firefly pull --use`, the app's Models screen): the llama.cpp
    engine's GGUF, when the saved settings' engine is llama.cpp or the automatic choice picks it
    here. Returns the GGUF's path (made now or already there), or None when the model runs on
    PyTorch (nothing to make). Reads only the model's description, never its weights into memory;
    cancellable between tensors (`cancel`), the partial file removed."""
    from .catalog import prompt_format_for
    from .loading import load_model, pick_device

    request = model_service().request_for(model)
    engine, _why_not = resolve_engine(request, pick_device(request.device).type)
    if engine != "llamacpp":
        return None
    from ..export.gguf_cache import ensure_gguf

    quiet_libraries(ui=True)
    lm = load_model(request.model, device=request.device, dtype=request.dtype, prompt_format=request.prompt_format,
                    catalog_format=prompt_format_for(request.model), trust_remote_code=request.trust_remote_code,
                    weights=False)
    path, _made = ensure_gguf(lm, quantize=request.quantize, threads=request.threads, status=status, cancel=cancel)
    return str(path)


def llamacpp_unavailable() -> str | None:
    """None when firefly's llama.cpp engine can run here, else why not."""
    import importlib.util

    if importlib.util.find_spec("firefly_core.generation.llamacpp") is None:
        return "this firefly has no llama.cpp engine"
    from ..generation import llamacpp

    return llamacpp.available()


def prepare_for_chat(
    lm: Any, request: ModelRequest, say: Callable[[str, str], None], cancel=None, cpu_sample=None
) -> None:
    """Make `lm` ready to chat, once: pick the engine and attach its decoder (`lm.decoder`), with
    int8 weights, CUDA-graph capture or the CPU kernels as the request and the machine allow.
    Each decision that falls back says why (in `lm.notes` and as a status line). `cpu_sample`:
    the CPU sample the thread choice uses (`cpu_use.SampleAhead.result`), else one taken here."""
    notes: list[str] = []
    engine, why_not = resolve_engine(request, lm.device.type)
    if engine == "llamacpp":
        from ..export.gguf_cache import attach_llamacpp

        # chosen once llama.cpp has read the file: the CPU sample overlaps the load
        threads_for = request.threads or (lambda: default_threads(lm, sample=cpu_sample))
        attach_llamacpp(lm, quantize=request.quantize, threads=threads_for, status=lambda m: say("llamacpp", m),
                        cancel=cancel)
        lm.engine = "llamacpp"
        lm.notes = tuple(notes)
        return
    threads = request.threads or default_threads(lm, sample=cpu_sample)
    if why_not and request.engine is None and lm.device.type == "cpu":
        notes.append(f"llama.cpp not used: {why_not}")
    from ..generation.loop import ModelDecoder

    if request.quantize:
        from ..generation.quantize import apply_quantization

        say("quantize", f"int8 weights for {request.model} …")
        report = apply_quantization(lm, request.quantize)
        if report is not None:
            say("quantize", report.summary())
    if lm.device.type == "cuda" and request.cuda_graph is not False:
        from ..generation.cuda_graph import enable_fast_decode

        plan = enable_fast_decode(lm, status=lambda m: say("cuda_graph", m))
        if plan.reason:
            notes.append(f"CUDA graph off: {plan.reason}")
    elif lm.device.type == "cpu":
        import torch

        torch.set_num_threads(threads)  # before the routes are timed: the winner can depend on it
        reason = prepare_cpu_route(lm.model, status=lambda m: say("kernels", m), cancel=cancel)
        if reason is not None:
            notes.append(f"PyTorch's decode kernels: {reason}")
            say("kernels", f"using PyTorch's decode kernels: {reason}")
        lm.decoder = ModelDecoder(lm.model, threads=threads)
    if lm.decoder is None:
        lm.decoder = ModelDecoder(lm.model)
    lm.engine = "torch"
    lm.notes = tuple(notes)


def prepare_cpu_route(model: Any, *, status: Callable[[str], None] | None = None, cancel=None) -> str | None:
    """Choose the CPU matrix route of `model` once and write it into its layers
    (`generation/cpu_route.py`): our kernels (built here, the only place they are built: a reply
    never compiles anything) where they may pay, then, for a model big enough to matter, the
    candidates timed on its own weights (`generation/route_timing.py`, cached per model, CPU and
    version) and the fastest kept; the choice is said on the status line. Returns why our kernels
    are not used when they would have been, else None."""
    from ..generation.cpu_route import apply_route
    from ..generation.gemv import kernels_pay, prepare_kernels
    from ..generation.quantize import quantization_of
    from ..generation.route_timing import describe_timings, measured_route

    wanted = kernels_pay(model) or quantization_of(model) is not None or _kernel_candidate(model)
    reason = prepare_kernels(status=status, cancel=cancel) if wanted else None
    route, timings = measured_route(model, kernels_ready=wanted and reason is None, status=status)
    apply_route(model, route)
    if timings and status is not None:
        status(describe_timings(route, timings))
    if reason is not None and not kernels_pay(model) and quantization_of(model) is None:
        return None  # the kernel was only a candidate to time: PyTorch's routine is what flags chose anyway
    return reason


def _kernel_candidate(model: Any) -> bool:
    """A bf16 model on the CPU big enough for our GEMV kernel to be worth timing against PyTorch's,
    even where the CPU's flags say PyTorch's bf16 is fast (issue 24: the kernel read weights at
    1.27x there). FIREFLY_GEMV=0 keeps it out."""
    import torch

    from ..generation.gemv import KERNEL_MIN_BYTES

    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu" or param.dtype != torch.bfloat16:
        return False
    if os.environ.get("FIREFLY_GEMV", "") == "0":
        return False
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 2) >= KERNEL_MIN_BYTES


def weights_label(lm: Any) -> str:
    """What the weights a reply reads are: `bfloat16`, `int8`, or llama.cpp's GGUF type."""
    gguf_type = getattr(getattr(lm, "decoder", None), "gguf_type", None)
    if gguf_type:
        return gguf_type
    if getattr(lm.model, "firefly_quantization", None) is not None:  # generation/quantize.py's mark
        return "int8"
    return str(lm.dtype).removeprefix("torch.")


def describe(lm: Any) -> str:
    """One line for a ready model: name, device, weights, engine, format."""
    dtype = weights_label(lm)
    decoder = getattr(lm, "decoder", None)
    extra = []
    if getattr(decoder, "threads", None):
        extra.append(f"{decoder.threads} thread{'s' if decoder.threads != 1 else ''}")
    route = getattr(lm.model, "firefly_cpu_route", None)  # generation/cpu_route.py's mark
    if route is not None and route.describe():
        extra.append(route.describe())
    return " · ".join([lm.name, str(lm.device), dtype, lm.engine, lm.prompt_format.name, *extra])


_SERVICE: ModelService | None = None
_SERVICE_LOCK = threading.Lock()


def model_service() -> ModelService:
    """The one ModelService of this process."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is None:
            _SERVICE = ModelService()
        return _SERVICE
