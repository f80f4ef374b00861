"""`firefly export`: a model (downloaded, pruned or fine-tuned) as a GGUF for llama.cpp and ollama."""

from __future__ import annotations

import argparse
import sys

TYPES = ("bf16", "f16", "f32", "q8_0", "q4_k_m")  # firefly_core.export.gguf.GGUF_TYPES (not imported: --help stays instant)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a model as a GGUF file for llama.cpp / ollama",
        description="Export a model folder or downloaded hub id (BLOOM, Qwen2/2.5, Llama-style; "
        "pruned and fine-tuned models too) as one GGUF file with its tokenizer, chat template and "
        "stop tokens. Quantized types are made by llama.cpp's own quantizer. --ollama also writes a "
        "Modelfile (prompt format as TEMPLATE, generation defaults as PARAMETERs) beside it.",
    )
    p.add_argument("model", help="model folder or downloaded hub id (default: the active model)", nargs="?")
    p.add_argument("--gguf", required=True, metavar="OUT.gguf", help="the GGUF file to write")
    p.add_argument("--type", default="bf16", choices=TYPES, help="weight type (default bf16: exact for bf16 models)")
    p.add_argument("--format", dest="prompt_format", choices=("firefly-v1", "firefly-v2", "chat_template"),
                   help="prompt format for the chat template / Modelfile (default: as `firefly chat` picks it)")
    p.add_argument("--ollama", action="store_true", help="also write a Modelfile for `ollama create`")
    p.add_argument("--force", action="store_true", help="replace an existing OUT.gguf")
    p.add_argument("--threads", type=int, metavar="N", help="quantizer threads (default: all)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the tokenizer's own code")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from firefly_core.errors import FireflyError
    from firefly_core.extras import require_extra

    require_extra("llamacpp")  # before loading anything: one message naming the extra and the install
    from firefly_core.export.gguf import check_export_target, export_gguf, model_info
    from firefly_core.export.ollama import write_modelfile

    model = args.model
    if not model:
        from firefly_core.models.user_settings import load_settings

        model = load_settings().active_model
        if not model:
            raise FireflyError("no model given and no active model", "name one: firefly export MODEL --gguf out.gguf")
    from pathlib import Path

    folder = Path(args.gguf).expanduser().resolve().parent
    new_folder = not folder.exists()
    out = check_export_target(args.gguf, replace=args.force)
    if new_folder:  # never made silently: the user sees where a folder appeared
        print(f"made the folder {folder}", file=sys.stderr)
    info = model_info(model, args.prompt_format, trust_remote_code=args.trust_remote_code)
    tty = sys.stderr.isatty()

    def status(message: str) -> None:
        print(("\r\033[K" if tty else "") + message, end="" if tty else "\n", file=sys.stderr, flush=True)

    export_gguf(info, out, gguf_type=args.type, status=status, threads=args.threads)
    if tty:
        print(file=sys.stderr)
    size = out.stat().st_size
    from firefly_core.units import human_bytes

    print(f"wrote {out} ({args.type}, {human_bytes(size)}, {info.prompt_format.name} prompt format)")
    if args.ollama:
        modelfile = write_modelfile(info, out, out.with_name("Modelfile"))
        print(f"wrote {modelfile}; next: ollama create {_ollama_name(model)} -f {modelfile}")
    return 0


def _ollama_name(model: str) -> str:
    from firefly_core.paths import file_slug

    return file_slug(model, lower=True, default="firefly")  # ollama model names are lower case
