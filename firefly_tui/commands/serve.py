"""`firefly serve`: the local model(s) behind an OpenAI-compatible API (see firefly_tui/server/).

Checks the models exist, binds the port (a port in use is a clear error), loads the first model
(so a broken model fails here, not on the first request; the others load on first use), then
serves until Ctrl-C. Heavy imports happen inside the handler, so `firefly --help` stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys

from firefly_core.models.engine_settings import EngineSettings  # torch-free
from firefly_core.models.user_settings import ModelSettings

from .setting_flags import add_setting_flags, setting_values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a local model through an OpenAI-compatible API",
        description="Serve local models through an OpenAI-compatible HTTP API (/v1/chat/completions, "
        "/v1/completions, /v1/models) for editors, notebooks, LangChain, Open WebUI or scripts. "
        "Replies are what `firefly chat` answers: the model's prompt format and saved settings.",
    )
    p.add_argument("--model", "-m", metavar="PATH_OR_ID", action="append", help="model folder or "
                   "downloaded hub id; repeat to serve several (a request picks one by its 'model'; the "
                   "first is the default). Default: the active model")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this "
                   "machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", metavar="KEY", default=os.environ.get("FIREFLY_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every request (default: $FIREFLY_API_KEY; "
                   "the environment keeps the key out of the process list)")
    p.add_argument("--allow-origin", metavar="ORIGIN", action="append", default=[],
                   help="let web pages from ORIGIN (e.g. http://localhost:3000) call the API from a "
                   "browser (CORS); repeat for several; '*' allows any page. Default: none")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--dtype", help="bf16, fp16 or fp32 (default: bf16 where the device handles it)")
    # the settings' flags come from their declarations (firefly_core/setting_spec.py), checked as parsed
    add_setting_flags(p, ModelSettings, ("prompt_format", "trust_remote_code"))
    add_setting_flags(p, EngineSettings)
    p.add_argument("--cache-slots", type=int, default=None, metavar="N",
                   help="conversations per model whose KV cache is kept between requests (default 4)")
    p.set_defaults(handler=run)


def request_overrides(args: argparse.Namespace) -> dict:
    """The ModelRequest fields the flags set (None = the saved per-model setting or the default)."""
    values = {
        "device": args.device,
        "dtype": args.dtype,
        **setting_values(args, ModelSettings, ("prompt_format",)),
        **setting_values(args, EngineSettings),
        "trust_remote_code": True if args.trust_remote_code else None,
    }
    return {k: v for k, v in values.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    from firefly_core.errors import ConfigError

    from firefly_tui.commands.chat import _active_model
    from firefly_tui.server import ApiServer, LOOPBACK, served_models, warn
    from firefly_tui.server.engine import DEFAULT_CACHE_SLOTS

    slots = DEFAULT_CACHE_SLOTS if args.cache_slots is None else args.cache_slots
    if slots < 1:
        raise ConfigError("--cache-slots must be at least 1")
    names = args.model or [_active_model()]
    models = served_models(names, overrides=request_overrides(args), cache_slots=slots, log=warn)
    if args.api_key is not None and not args.api_key.strip():
        args.api_key = None
        warn("warning: the API key is empty: key check OFF, every client is let in")
    server = ApiServer(models, host=args.host, port=args.port, api_key=args.api_key,
                       allow_origins=args.allow_origin)
    if args.host not in LOOPBACK and not args.api_key:
        warn(f"warning: listening on {args.host} without --api-key: anyone who can reach this machine "
             "can use the model")
    if "*" in args.allow_origin and not args.api_key:
        warn("warning: --allow-origin '*' without --api-key: any web page can use the model")
    first = models[0]
    try:
        first.load(status=warn)
    except BaseException:
        server.stop()
        raise
    others = f" (+ {', '.join(m.id for m in models[1:])}, loaded on first use)" if len(models) > 1 else ""
    warn(f"serving {first.id}{others}")
    warn(f"OpenAI API at {server.url}  ·  base_url={server.url!r}  ·  Ctrl-C stops")
    sys.stderr.flush()
    server.serve_forever()
    warn("stopped")
    return 0
