"""`firefly chat`: a plain terminal REPL (no Textual) that streams replies from a local model.

Multi-turn with KV-prefix reuse: the session comes from `firefly_core.session.open_session` (the same
resolution of prompt format, system prompt and settings as the app and `firefly serve`) and the history
is a `firefly_core.conversation.Conversation` in an in-memory store; `/reset` forgets the conversation,
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

from firefly_core.generation.config import GENERATION_KEYS, GenerationConfig  # torch-free
from firefly_core.models.engine_settings import EngineSettings
from firefly_core.models.user_settings import ModelSettings

from .setting_flags import add_setting_flags, setting_values

DIM, RESET = "\x1b[2m", "\x1b[0m"
COMMANDS = {
    "/attach": "/attach PATH (add a text file to your next message)",
    "/reset": "/reset (forget the conversation)",
    "/exit": "/exit (quit)",
    "/help": "/help",
}
HELP = "commands: " + ", ".join(COMMANDS.values()) + "; Ctrl-C stops a reply"


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
    # the settings' flags come from their declarations (firefly_core/setting_spec.py), checked as parsed
    add_setting_flags(p, ModelSettings, ("prompt_format", "system", "trust_remote_code"))
    add_setting_flags(p, GenerationConfig, GENERATION_KEYS, show_defaults=True)
    p.add_argument("--seed", type=int, help="random seed: the same seed gives the same replies")
    p.add_argument("--greedy", action="store_true", help="always pick the most likely token")
    add_setting_flags(p, EngineSettings)
    p.add_argument("--no-stats", action="store_true", help="do not print speed after each reply")
    p.set_defaults(handler=run)


def _active_model() -> str:
    from firefly_core.errors import ConfigError
    from firefly_core.models.user_settings import load_settings

    model = load_settings().active_model
    if not model:
        raise ConfigError(
            "no model given and no active model is set",
            "pass --model PATH_OR_ID (a model folder or a downloaded hub id)",
        )
    return model


def generation_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The generation settings the command line sets (the top layer of resolve_generation_config)."""
    flags = setting_values(args, GenerationConfig, GENERATION_KEYS)
    if args.seed is not None:
        flags["seed"] = args.seed
    if args.greedy:
        flags["do_sample"] = False
    return flags


def load_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model service's options the flags set (over the user's saved per-model settings)."""
    return {
        "device": args.device,
        "dtype": args.dtype,
        "trust_remote_code": True if args.trust_remote_code else None,
        "engine": args.engine,
        "quantize": args.quantize,
        "cuda_graph": args.cuda_graph,
        "threads": args.threads,
    }


def chat_options(args: argparse.Namespace) -> dict[str, Any]:
    """The chat settings the flags set: the prompt format, and the system prompt (an empty
    --system "" means none, even when one is saved for the model)."""
    chat: dict[str, Any] = {}
    if args.prompt_format:
        chat["prompt_format"] = args.prompt_format
    if args.system is not None:
        chat["system"] = args.system
    return chat


def run(args: argparse.Namespace) -> int:
    from firefly_core.conversation import Conversation
    from firefly_core.errors import FireflyError
    from firefly_core.session import open_session
    from firefly_core.store import ChatStore

    model = args.model or _active_model()
    interactive = sys.stdin.isatty()
    tty_out = sys.stdout.isatty()
    talk = interactive or sys.stderr.isatty()

    said: set[str] = set()

    def show(status: Any) -> None:
        """Each load step as it happens (a first-run kernel compile takes a while: say so)."""
        if talk and status.step != "ready" and status.message not in said:
            said.add(status.message)
            _note(status.message)

    if talk:
        said.add(f"loading {model} …")  # the service's first step says the same
        _note(f"loading {model} …")  # at once: the first load takes seconds
    session = open_session(
        model, chat_options(args), overrides=generation_flags(args), load=load_options(args), status=show
    )
    lm = session.lm
    store = ChatStore(":memory:")  # this REPL's history: gone when it ends, like the terminal's
    conversation = Conversation.create(store, "firefly chat", session=session)
    if interactive:
        from firefly_core.models.service import describe

        for note in lm.notes:
            print(f"{DIM}{note}{RESET}", file=sys.stderr, flush=True)
        print(f"{DIM}{describe(lm)} · {HELP}{RESET}", file=sys.stderr, flush=True)
    show_stats = tty_out and not args.no_stats
    failed = False
    attached: list = []  # files for the next message (firefly_core.attachment.Attachment)
    while True:
        try:
            line = _read_line(interactive)
        except FireflyError as e:  # undecodable input: say which line, keep going
            _print_error(e)
            failed = True
            continue
        if line is None:
            if interactive:
                print(file=sys.stderr)
            return 1 if failed else 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 1 if failed else 0
        if text == "/reset":
            session.reset()
            conversation = Conversation.create(store, "firefly chat", session=session)
            if interactive:
                print(f"{DIM}(conversation reset){RESET}", file=sys.stderr, flush=True)
            continue
        if text == "/help":
            print(HELP, file=sys.stderr, flush=True)
            continue
        command = text.split(maxsplit=1)[0]
        if command == "/attach":
            try:
                attached.append(_attach(conversation, attached, text[len(command):].strip()))
            except FireflyError as e:
                _print_error(e)
                failed = True
            continue
        if _looks_like_command(command) and command not in COMMANDS and command != "/quit":
            print(f"unknown command {command}; {HELP}", file=sys.stderr, flush=True)
            failed = True
            continue
        try:
            _stream_reply(conversation, text, show_stats, attached)
            attached = []
        except BrokenPipeError:  # the reader went away (e.g. `| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except FireflyError as e:  # e.g. a message longer than the context: this turn ends, not the chat
            _print_error(e)
            failed = True


def _looks_like_command(word: str) -> bool:
    """`/foo` is a command (known or not); `/usr/bin …` or `/` alone is a message."""
    return len(word) > 1 and word[0] == "/" and word[1:].isascii() and word[1:].isalpha()


def _attach(conversation: Any, attached: list, path: str) -> Any:
    """Read a text file for the next message, refused (AttachmentError) when it is not attachable
    text or the next message would not fit the model's context window; shows its chip."""
    from firefly_core.attachment import AttachmentError, message_with_attachments, read_attachment

    if not path:
        raise AttachmentError("/attach needs a file", "e.g. /attach notes.md")
    att = read_attachment(path)
    view = conversation.context_view(message_with_attachments("", [*attached, att]))
    if view is not None and not view.measure.fits:
        m = view.measure
        raise AttachmentError(
            f"{att.name} would not fit: the message would be {m.tokens} tokens, and the model's window is "
            f"{m.context_length} tokens with {m.max_new_tokens} kept for the reply",
            "attach a shorter file, or lower --max-new-tokens",
        )
    tokens = conversation.session.count_tokens(att.text)
    note = f"[{att.name} · {tokens} tokens] attached to your next message"
    if view is not None and view.measure.dropped_turns:
        note += f" · {_dropped_text(view.measure.dropped_turns)}"
    _note(note)
    return att


def _dropped_text(turns: int) -> str:
    return f"{turns} earlier turn{'s' if turns != 1 else ''} not sent"


def meter_text(view: Any) -> str:
    """The token meter in the stats line: what the next prompt uses of the window, and what of the
    conversation the model no longer sees."""
    if view is None:
        return ""
    m = view.measure
    text = f"tokens {m.tokens}/{m.context_length}"
    return text + (f" · {_dropped_text(m.dropped_turns)}" if m.dropped_turns else "")


def _note(message: str) -> None:
    """A dim line on stderr (plain when stderr is not a terminal)."""
    dim, reset = (DIM, RESET) if sys.stderr.isatty() else ("", "")
    print(f"{dim}{message}{reset}", file=sys.stderr, flush=True)


def _print_error(e: Any) -> None:
    from firefly_core.errors import format_error

    print(format_error(e, lines=True), file=sys.stderr, flush=True)


def decode_input(raw: bytes, line_no: int) -> str:
    """A line of input as text: UTF-8, else GB18030 (a lossless superset of GBK, what Chinese
    Windows tools write), else a clear error; never strings with surrogates for the tokenizer."""
    from firefly_core.errors import FireflyError

    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError:
        raise FireflyError(
            f"input line {line_no} is neither UTF-8 nor GBK/GB18030 text; it was skipped",
            "convert the input to UTF-8 first, e.g. iconv -f YOUR_ENCODING -t UTF-8",
        ) from None
    _note(f"(input line {line_no} is not UTF-8; read it as GBK/GB18030)")
    return text


_line_no = 0


def _read_line(interactive: bool) -> str | None:
    """The next line of input, or None at end of input. Ctrl-C at the prompt only clears the line.
    Bytes that are not UTF-8 are decoded by `decode_input` (or refused with a clear error)."""
    global _line_no
    _line_no += 1
    if not interactive:
        raw = sys.stdin.buffer.readline()
        return decode_input(raw, _line_no) if raw else None
    while True:
        try:
            line = input("\x1b[1m>\x1b[0m ")
        except EOFError:
            return None
        except KeyboardInterrupt:
            print(f"\n{DIM}(/exit or Ctrl-D to quit){RESET}", file=sys.stderr, flush=True)
            continue
        except UnicodeDecodeError as e:  # a terminal that sends non-UTF-8 bytes
            return decode_input(e.object, _line_no)
        if any("\ud800" <= ch <= "\udfff" for ch in line):  # surrogateescape'd bytes from a C locale
            return decode_input(line.encode("utf-8", "surrogateescape"), _line_no)
        return line


def _stream_reply(conversation: Any, text: str, show_stats: bool, attached: list | None = None) -> None:
    """Answer `text` (with the `attached` files' text) in `conversation`, printing the reply as it
    streams (the session holds the model's generation lock while it does). A reply stopped with
    Ctrl-C stays in the history with its partial text, as in the app."""
    from firefly_core.attachment import attachments_meta, message_with_attachments
    from firefly_core.generation import ReplyDone, TextDelta

    meta = None
    if attached:
        session = conversation.session
        meta = attachments_meta(attached, [session.count_tokens(a.text) for a in attached])
        text = message_with_attachments(text, attached)

    cancel = threading.Event()
    on_main = threading.current_thread() is threading.main_thread()
    previous = None
    if on_main:
        # Ctrl-C during a reply stops it between tokens instead of killing the program.
        previous = signal.signal(signal.SIGINT, lambda signum, frame: cancel.set())
    done = None
    try:
        for event in conversation.send(text, cancel, meta=meta):
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
        line = format_stats(done.stats, done.cancelled, meter_text(conversation.context_view("")))
        print(f"{DIM}{line}{RESET}", flush=True)


def format_stats(stats: Any, cancelled: bool = False, meter: str = "") -> str:
    parts = [
        f"{stats.new_tokens} tokens",
        f"{stats.tokens_per_s:.1f} tok/s",
        f"first token {stats.ttft_s * 1000:.0f} ms",
        f"prompt {stats.prompt_tokens} ({stats.reused_tokens} reused)",
    ]
    if meter:
        parts.append(meter)  # the next prompt, against the window (replaces "context used")
    elif stats.context_length:
        parts.append(f"context {stats.context_used}/{stats.context_length}")
    if cancelled:
        parts.append("stopped")
    return "  " + " · ".join(parts)
