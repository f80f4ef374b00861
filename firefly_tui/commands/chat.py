"""`firefly chat`: a plain terminal REPL (no Textual) that streams replies from a local model.

Multi-turn with KV-prefix reuse (firefly_core.chat.ChatSession); `/reset` forgets the conversation,
`/exit` (or end of input) quits; Ctrl-C stops the current reply and keeps the session. With stdin
piped from another program it prints only the replies, one after the other, each ending in a newline.
Heavy imports happen inside the handler, so `firefly --help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

FORMATS = ("firefly-v1", "firefly-v2", "chat_template")  # firefly_core.formats.FORMAT_NAMES
DIM, RESET = "\x1b[2m", "\x1b[0m"
HELP = "commands: /reset (forget the conversation), /exit (quit), /help; Ctrl-C stops a reply"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "chat",
        help="chat with a local model in the terminal (streaming, multi-turn)",
        description="Chat with a local model. Type a message and press Enter; /reset forgets the "
        "conversation, /exit or Ctrl-D quits, Ctrl-C stops the current reply. Reads piped stdin too: "
        "echo '你好' | firefly chat --model PATH",
    )
    p.add_argument("--model", "-m", metavar="PATH_OR_ID", help="model folder or downloaded hub id "
                   "(default: the active model, see `firefly models`)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--dtype", help="bf16, fp16 or fp32 (default: bf16 where the device handles it)")
    p.add_argument("--format", choices=FORMATS, help="prompt format (default: from the model)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--temperature", type=float, help="sampling temperature (default 0.35; 0 = greedy)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass (default 0.85)")
    p.add_argument("--top-k", type=int, help="keep the k most likely tokens (default 0 = off)")
    p.add_argument("--repetition-penalty", type=float, help="penalty for repeated tokens (default 1.2)")
    p.add_argument("--max-new-tokens", type=int, help="longest reply in tokens (default 200)")
    p.add_argument("--seed", type=int, help="random seed: the same seed gives the same replies")
    p.add_argument("--greedy", action="store_true", help="always pick the most likely token")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a model's own Python code")
    p.add_argument("--quantize", choices=("int8",), help="int8 weights on CPU: about 2x faster replies, "
                   "a small quality cost (see README)")
    p.add_argument("--no-cuda-graph", action="store_true", help="on a GPU, decode eagerly instead of "
                   "replaying a captured CUDA graph")
    p.add_argument("--no-stats", action="store_true", help="do not print speed after each reply")
    p.set_defaults(handler=run)


def _active_model() -> str:
    from firefly_core.errors import ConfigError

    no_model = ConfigError(
        "no model given and no active model is set",
        "pass --model PATH_OR_ID (a model folder or a downloaded hub id)",
    )
    try:
        from firefly_core.models.settings import load_settings
    except ImportError:
        raise no_model from None
    model = load_settings().active_model
    if not model:
        raise no_model
    return model


def _model_settings(model: str) -> Any:
    try:
        from firefly_core.models.settings import load_settings

        return load_settings().for_model(model)
    except ImportError:
        return None


def build_config(args: argparse.Namespace, saved: Any = None):
    """GenerationConfig from the seeds' defaults, then the model's saved settings, then the flags."""
    from firefly_core.generation import GenerationConfig

    overrides: dict[str, Any] = {}
    if saved is not None:
        overrides.update(saved.generation_overrides())
    flags = {
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.greedy:
        overrides["do_sample"] = False
    return GenerationConfig().with_overrides(**overrides)


def run(args: argparse.Namespace) -> int:
    from firefly_core.models.catalog import prompt_format_for
    from firefly_core.chat import ChatSession
    from firefly_core.models.loading import load_model

    model = args.model or _active_model()
    saved = _model_settings(model)
    config = build_config(args, saved)
    interactive = sys.stdin.isatty()
    tty_out = sys.stdout.isatty()
    if interactive:
        print(f"{DIM}loading {model} ...{RESET}", file=sys.stderr, flush=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a progress bar for a local read is noise in a REPL
    lm = load_model(
        model,
        device=args.device,
        dtype=args.dtype,
        prompt_format=args.format or (saved.prompt_format if saved else None),
        catalog_format=prompt_format_for(model),
        trust_remote_code=args.trust_remote_code or bool(saved and saved.trust_remote_code),
    )
    _fast_decode(lm, args, interactive)
    system = args.system if args.system is not None else (saved.system if saved else None)
    session = ChatSession(lm, system=system, config=config)
    if interactive:
        print(
            f"{DIM}{lm.name} · {lm.device} · {str(lm.dtype).removeprefix('torch.')} · "
            f"{lm.prompt_format.name} · {HELP}{RESET}",
            file=sys.stderr,
            flush=True,
        )
    show_stats = tty_out and not args.no_stats
    while True:
        line = _read_line(interactive)
        if line is None:
            if interactive:
                print(file=sys.stderr)
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            session.reset()
            if interactive:
                print(f"{DIM}(conversation reset){RESET}", file=sys.stderr, flush=True)
            continue
        if text == "/help":
            print(HELP, file=sys.stderr, flush=True)
            continue
        try:
            _stream_reply(session, text, show_stats)
        except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0


def _fast_decode(lm: Any, args: argparse.Namespace, interactive: bool) -> None:
    """int8 weights when asked (CPU); on CUDA the graph-captured decode step unless turned off."""
    say = (lambda s: print(f"{DIM}{s}{RESET}", file=sys.stderr, flush=True)) if interactive else None
    if args.quantize:
        from firefly_core.generation.quantize import apply_quantization

        report = apply_quantization(lm, args.quantize)
        if say:
            say(report.summary())
    elif lm.device.type == "cuda" and not args.no_cuda_graph:
        from firefly_core.generation.cuda_graph import enable_fast_decode

        enable_fast_decode(lm, status=say)
    if lm.device.type == "cpu":
        # Build the decoder now, so a first-run compile of the CPU decode kernels (generation/gemv.py,
        # ~20-40 s once, then cached) happens while "loading", not inside the first reply.
        from firefly_core.generation import decoder_for
        from firefly_core.generation.gemv import unavailable_reason

        decoder_for(lm)
        if say and str(lm.dtype) == "torch.bfloat16" and unavailable_reason():
            say(f"using PyTorch's decode kernel: {unavailable_reason()}")


def _read_line(interactive: bool) -> str | None:
    """The next line of input, or None at end of input. Ctrl-C at the prompt only clears the line."""
    if not interactive:
        line = sys.stdin.readline()
        return line if line else None
    while True:
        try:
            return input("\x1b[1m>\x1b[0m ")
        except EOFError:
            return None
        except KeyboardInterrupt:
            print(f"\n{DIM}(/exit or Ctrl-D to quit){RESET}", file=sys.stderr, flush=True)


def _stream_reply(session: Any, text: str, show_stats: bool) -> None:
    from firefly_core.generation import ReplyDone, TextDelta

    cancel = threading.Event()
    on_main = threading.current_thread() is threading.main_thread()
    previous = None
    if on_main:
        # Ctrl-C during a reply stops it between tokens instead of killing the program.
        previous = signal.signal(signal.SIGINT, lambda signum, frame: cancel.set())
    done = None
    try:
        for event in session.send(text, cancel):
            if isinstance(event, TextDelta):
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif isinstance(event, ReplyDone):
                done = event
    finally:
        if on_main:
            signal.signal(signal.SIGINT, previous)
    sys.stdout.write("\n")
    sys.stdout.flush()
    if done is not None and show_stats:
        print(f"{DIM}{format_stats(done.stats, done.cancelled)}{RESET}", flush=True)


def format_stats(stats: Any, cancelled: bool = False) -> str:
    parts = [
        f"{stats.new_tokens} tokens",
        f"{stats.tokens_per_s:.1f} tok/s",
        f"first token {stats.ttft_s * 1000:.0f} ms",
        f"prompt {stats.prompt_tokens} ({stats.reused_tokens} reused)",
    ]
    if stats.context_length:
        parts.append(f"context {stats.context_used}/{stats.context_length}")
    if cancelled:
        parts.append("stopped")
    return "  " + " · ".join(parts)
