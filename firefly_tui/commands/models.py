"""`firefly pull | list | rm | show | use`: get models from the hub, see what is here, pick one.

Models live in the standard Hugging Face cache (HF_HOME), so other tools share them. Downloads
show a progress bar on a terminal (one line per file otherwise), resume where they stopped, and
stop cleanly on Ctrl-C (the partial file is kept for the next `pull`). Heavy imports happen inside
the handlers so `firefly --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any, Callable

from firefly_core.models.user_settings import ModelSettings  # torch-free
from firefly_core.units import human_bytes

from .setting_flags import add_setting_flags, setting_values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pull", aliases=["download"],
        help="download a model from the Hugging Face Hub (resumes an unfinished one)",
        description="Download a model into the Hugging Face cache: config, tokenizer and one copy "
        "of the weights (safetensors preferred). Resumes an interrupted download; Ctrl-C stops it and "
        "keeps what was fetched. Honours HF_ENDPOINT, HF_TOKEN, HF_HOME and HF_HUB_OFFLINE. "
        "Example: firefly pull Qwen/Qwen2.5-0.5B-Instruct",
    )
    p.add_argument("model", metavar="ID", help="hub id (org/name), e.g. YeungNLP/firefly-1b4 (see: firefly list --all)")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model that runs its own Python code (remembered for this model)")
    p.add_argument("--use", action="store_true", help="make it the active model when done")
    p.add_argument("--dataset", action="store_true",
                   help="ID is a dataset (an exam for firefly eval, e.g. ceval/ceval-exam): fetch its CSV, "
                   "JSONL and Parquet files")
    p.set_defaults(handler=run_pull)

    p = subparsers.add_parser(
        "list", aliases=["ls", "models"],
        help="list downloaded models (and with --all the catalog)",
        description="Models on this machine: the Hugging Face cache and local folders you added, "
        "with size and whether each is complete. * marks the active model.",
    )
    p.add_argument("--all", "-a", action="store_true", help="also list catalog models not downloaded yet")
    p.set_defaults(handler=run_list)

    p = subparsers.add_parser(
        "rm", help="delete a downloaded model from the cache (asks first)",
        description="Delete a model from the Hugging Face cache (a local folder is only forgotten, "
        "never deleted). Example: firefly rm YeungNLP/firefly-1b4 --yes",
    )
    p.add_argument("model", metavar="ID")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=run_rm)

    p = subparsers.add_parser(
        "show", help="details of a model: catalog entry, files here, settings",
        description="What firefly knows about a model: catalog entry, where it is, whether it is "
        "complete, and its saved settings. Example: firefly show YeungNLP/firefly-1b4",
    )
    p.add_argument("model", metavar="ID")
    p.set_defaults(handler=run_show)

    p = subparsers.add_parser(
        "use", help="set the active model and its settings",
        description="Make a model the one `firefly chat` and the app use when no --model is given, "
        "and save its settings. A folder is added to the list. Without ID: show the active model. "
        "Example: firefly use YeungNLP/firefly-1b4 --temperature 0.35",
    )
    p.add_argument("model", metavar="ID_OR_PATH", nargs="?")
    # one flag per saved setting, from the declarations (firefly_core/setting_spec.py), checked as parsed
    add_setting_flags(p, ModelSettings)
    p.add_argument("--reset", action="store_true", help="forget this model's saved settings first")
    p.set_defaults(handler=run_use)


# ---------------------------------------------------------------- helpers


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _ConsoleProgress:
    """Renders DownloadProgress events: a rich bar on a terminal, one line per file otherwise."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._bar: Any = None
        self._task: Any = None
        self._last_files = -1

    def __enter__(self) -> "_ConsoleProgress":
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.fields[sizes]}  {task.fields[speed]}  ETA {task.fields[eta]}"),
                console=Console(file=self.stream), transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=None, sizes="", speed="", eta="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def say(self, line: str) -> None:
        if self._bar is not None:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stream, flush=True)

    def __call__(self, ev) -> None:
        sizes = f"{human_bytes(ev.bytes_done)} / {human_bytes(ev.bytes_total)}"
        if self._bar is not None:
            self._bar.update(
                self._task, completed=ev.bytes_done, total=max(ev.bytes_total, 1),
                description=f"{ev.files_done}/{ev.files_total} {ev.current_file or ''}".rstrip(),
                sizes=sizes, speed=f"{human_bytes(ev.speed_bps)}/s", eta=_eta(ev.eta_s),
            )
        elif ev.files_done != self._last_files:
            self._last_files = ev.files_done
            print(f"  {ev.files_done}/{ev.files_total} files, {sizes}", file=self.stream, flush=True)


def _remote_code_allowed(model: str) -> bool:
    from firefly_core.models.user_settings import load_settings

    return load_settings().for_model(model).trust_remote_code


def _cancellable(work: Callable[[], Any], cancel: threading.Event, name: str) -> dict[str, Any]:
    """Run `work` in a worker thread so that Ctrl-C in the terminal sets `cancel` (which the work
    polls) and waits for it to stop cleanly, instead of interrupting it mid-write. Returns
    {"path": what work returned} or {"error": what it raised} for the caller to report.

    The wait is on an Event the worker sets when it ends, not on `Thread.join`: a KeyboardInterrupt
    that lands inside `join()` can leave the thread looking finished while it still runs (CPython
    3.11), and the caller would then read a result that is not there yet."""
    result: dict[str, Any] = {}
    finished = threading.Event()

    def run() -> None:
        try:
            result["path"] = work()
        except BaseException as e:  # handed to the main thread
            result["error"] = e
        finally:
            finished.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        cancel.set()
        finished.wait()
    return result


def _prepare_files(model: str) -> None:
    """Make the files the first chat with `model` needs (the llama.cpp engine's GGUF, when that is
    the engine it will run on) now, with a progress line, so that chat starts at load speed.
    Ctrl-C stops it (the first chat makes it then); a failure is a note, the choice stays saved."""
    from firefly_core.errors import FireflyError
    from firefly_core.models.service import prepare_model_files

    tty = sys.stderr.isatty()
    cancel = threading.Event()
    shown = {"width": 0}

    def say(message: str) -> None:
        if tty:  # one line, rewritten in place
            line = message[: max(20, _columns() - 1)]
            print("\r" + line.ljust(shown["width"]), end="", file=sys.stderr, flush=True)
            shown["width"] = len(line)
        else:
            print(f"  {message}", file=sys.stderr, flush=True)

    result = _cancellable(lambda: prepare_model_files(model, status=say, cancel=cancel), cancel, "firefly-prepare")
    if tty and shown["width"]:  # the progress line goes; the outcome is printed below
        print("\r" + " " * shown["width"] + "\r", end="", file=sys.stderr, flush=True)
    err = result.get("error")
    if isinstance(err, FireflyError):
        from firefly_core.export.gguf import ExportCancelled

        if isinstance(err, ExportCancelled):
            print("stopped: the llama.cpp model will be made when you first chat", file=sys.stderr)
        else:
            print(f"note: the llama.cpp model was not made now: {err.message}; the first chat tries again",
                  file=sys.stderr)
    elif err is not None:
        raise err
    elif result.get("path"):
        from pathlib import Path

        gguf = Path(result["path"])
        kind = gguf.suffixes[-2].lstrip(".") if len(gguf.suffixes) >= 2 else "gguf"
        print(f"llama.cpp model ready ({kind}, {human_bytes(gguf.stat().st_size)}): the first chat only loads it")


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((80, 24)).columns


# ---------------------------------------------------------------- handlers


def run_pull(args: argparse.Namespace) -> int:
    from firefly_core.models import folder, hub, inventory
    from firefly_core.errors import DownloadCancelled
    from firefly_core.models.user_settings import set_active_model, update_model_settings

    model = args.model
    if getattr(args, "dataset", False) and (args.trust_remote_code or args.use):
        from firefly_core.errors import ConfigError

        raise ConfigError("--trust-remote-code and --use are for models, not --dataset")
    allow = not getattr(args, "dataset", False) and (args.trust_remote_code or _remote_code_allowed(model))
    cancel = threading.Event()

    with _ConsoleProgress() as bar:
        def on_plan(plan) -> None:
            bar.say(f"pulling {plan.repo_id} @ {plan.commit[:10]}: {len(plan.files)} files, "
                    f"{human_bytes(plan.total_bytes)}")
            skipped = [n for n in plan.skipped if not n.startswith(".")]
            if skipped:
                shown = ", ".join(skipped[:6]) + (f" and {len(skipped) - 6} more" if len(skipped) > 6 else "")
                bar.say(f"  not needed, skipped: {shown}")

        def work() -> Any:
            if getattr(args, "dataset", False):
                return hub.pull_dataset(model, revision=args.revision, progress=bar, cancel=cancel, on_plan=on_plan)
            return hub.pull(model, revision=args.revision, progress=bar, cancel=cancel,
                            allow_remote_code=allow, on_plan=on_plan)

        # A Ctrl-C here becomes a clean cancel (the partial file is kept, a pull again resumes).
        result = _cancellable(work, cancel, "firefly-pull")
    if "error" in result:
        err = result["error"]
        if isinstance(err, DownloadCancelled):
            again = f"firefly pull --dataset {model}" if getattr(args, "dataset", False) else f"firefly pull {model}"
            print(f"stopped: {err.message}; run `{again}` to resume", file=sys.stderr)
            return 130
        raise err
    path = result["path"]
    if args.trust_remote_code:
        update_model_settings(model, trust_remote_code=True)
    if args.use:
        set_active_model(model)
    print(f"ready: {model} at {path}")
    if not getattr(args, "dataset", False):
        _prepare_files(model)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from firefly_core.models import folder, hub, inventory
    from firefly_core.models.catalog import catalog
    from firefly_core.models.user_settings import load_settings

    active = load_settings().active_model
    installed = inventory.list_installed()
    rows = []
    for m in installed:
        if m.complete:
            status = "complete"
        elif m.source == "hub-cache" and any("damaged" in why for why in m.missing):
            status = "INCOMPLETE, damaged (firefly pull repairs it)"
        else:
            status = "INCOMPLETE (firefly pull to resume)" if m.source == "hub-cache" else "INCOMPLETE"
        mark = "*" if active and active.lower() == m.id.lower() else " "
        rows.append((mark, m.id, human_bytes(m.size_bytes), status, m.source))
    if args.all:
        have = {m.id.lower() for m in installed}
        for e in catalog():
            if e.id.lower() not in have:
                mark = "*" if active and active.lower() == e.id.lower() else " "
                flag = ", remote code" if e.needs_remote_code else ""
                rows.append((mark, e.id, f"~{e.download_size_gb:.1f} GB", f"not downloaded ({e.params}, {e.kind}{flag})", "catalog"))
    if not rows:
        print("no models here yet; see the catalog with: firefly list --all, then: firefly pull ID")
        return 0
    widths = [max(len(r[i]) for r in rows + [(" ", "MODEL", "SIZE", "STATUS", "SOURCE")]) for i in range(5)]
    for r in [(" ", "MODEL", "SIZE", "STATUS", "SOURCE")] + rows:
        print(f"{r[0]} {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}".rstrip())
    if not args.all:
        print(f"\n{len(installed)} model(s); the catalog of known models: firefly list --all")
    return 0


def run_rm(args: argparse.Namespace) -> int:
    from firefly_core.models import folder, hub, inventory
    from firefly_core.errors import ModelNotFoundError
    from firefly_core.models.user_settings import load_settings, save_settings

    found = inventory.find_installed(args.model)
    if found is None:
        raise ModelNotFoundError(f"{args.model} is not downloaded or registered", inventory.local_summary())
    what = (f"forget the local folder {found.path} (the files stay)" if found.source == "local"
            else f"delete {found.id} ({human_bytes(found.size_bytes)}) from the Hugging Face cache")
    if not args.yes:
        print(f"{what[0].upper() + what[1:]}? [y/N] ", end="", flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            print("aborted, nothing removed")
            return 1
    freed = inventory.remove(found.id if found.source == "hub-cache" else found.path)
    s = load_settings()
    if s.active_model and s.active_model.lower() == found.id.lower():
        s.active_model = None
        save_settings(s)
        print("(it was the active model; choose another with: firefly use ID)")
    print(f"removed {found.id}" + (f", {human_bytes(freed)} freed" if freed else ""))
    return 0


def run_show(args: argparse.Namespace) -> int:
    from firefly_core.models import folder, hub, inventory
    from firefly_core.models.catalog import find_entry
    from firefly_core.errors import ModelNotFoundError
    from firefly_core.models.user_settings import load_settings

    entry = find_entry(args.model)
    found = inventory.find_installed(args.model)
    if entry is None and found is None:
        raise ModelNotFoundError(
            f"{args.model} is not in the catalog and not downloaded",
            f"download it with: firefly pull {args.model} (see: firefly list --all)",
        )
    name = found.id if found else entry.id
    settings = load_settings()
    print(name + ("  (active)" if settings.active_model and settings.active_model.lower() == name.lower() else ""))
    if entry:
        print(f"  catalog:     {entry.params} parameters, download ~{entry.download_size_gb:.1f} GB "
              f"(approximate), {entry.kind} model, languages {'/'.join(entry.languages)}")
        print(f"  format:      {entry.prompt_format}")
        print(f"  note:        {entry.note}")
        if entry.license:
            print(f"  license:     {entry.license}")
    ms = settings.models.get(name) or next((v for k, v in settings.models.items() if k.lower() == name.lower()), None)
    if found:
        state = "complete" if found.complete else f"INCOMPLETE (missing: {', '.join(found.missing)})"
        print(f"  here:        {found.path} ({found.source}), {human_bytes(found.size_bytes)} on disk, {state}")
        if found.complete and found.path.is_dir():
            _print_details(found.path, ms, entry)
            remote = folder.needs_remote_code(found.path)
            print(f"  remote code: {'needed (allow with: firefly use ' + name + ' --trust-remote-code)' if remote else 'no'}")
    else:
        print(f"  here:        not downloaded (firefly pull {name})")
        if entry and entry.needs_remote_code:
            print("  remote code: needed")
    from firefly_core.models.engine_settings import ENGINE_KEYS

    chosen = _chosen_settings(ms)
    engine = {k: v for k, v in chosen.items() if k in ENGINE_KEYS}
    print("  engine:      " + (", ".join(f"{k}={v!r}" for k, v in engine.items()) if engine else
                             "automatic (llama.cpp on a CPU when installed, else PyTorch)"))
    rest = {k: v for k, v in chosen.items() if k not in ENGINE_KEYS}
    if rest:
        print("  settings:    " + ", ".join(f"{k}={v!r}" for k, v in rest.items()))
    return 0


def _chosen_settings(ms) -> dict:
    """The saved per-model settings that are set: 0 and 0.0 are values (temperature 0 = greedy);
    only None (not chosen) and False (a switch left off) are left out."""
    if ms is None:
        return {}
    from dataclasses import asdict

    return {k: v for k, v in asdict(ms).items() if v is not None and v is not False}


def _print_details(path, ms, entry) -> None:
    """Architecture, parameters, context window and prompt format, read from the folder's small files."""
    from firefly_core.models.details import human_count, model_details

    d = model_details(path, saved_format=getattr(ms, "prompt_format", None),
                      catalog_format=getattr(entry, "prompt_format", None))
    params = human_count(d.parameters) + f" ({d.parameters:,})" if d.parameters else "unknown (no safetensors files)"
    print(f"  arch:        {d.architecture or 'unknown'}" + (f", weights {d.dtype}" if d.dtype else ""))
    print(f"  parameters:  {params}")
    print(f"  context:     " + (f"{d.context_length} tokens" if d.context_length else "not set in config.json (2048 used)"))
    print(f"  prompt:      {d.prompt_format} (from the {d.prompt_format_from})")


def run_use(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firefly_core.models import folder, hub, inventory
    from firefly_core.errors import ModelNotFoundError
    from firefly_core.models.names import check_model_name
    from firefly_core.models.user_settings import load_settings, update_model_settings

    if args.model is None:
        settings = load_settings()
        print(settings.active_model or "no active model; set one with: firefly use ID")
        return 0
    model = check_model_name(args.model, where="firefly use")
    if Path(model).expanduser().is_dir():
        inventory.register_local(model)
        model = str(Path(model).expanduser().resolve())
    else:
        found = inventory.find_installed(model)
        if found is None:
            raise ModelNotFoundError(f"{model} is not downloaded", f"download it first: firefly pull {model}")
        model = found.id
        if not found.complete:
            print(f"note: {model} is incomplete ({', '.join(found.missing)}); finish it with: firefly pull {model}",
                  file=sys.stderr)
    update_model_settings(model, reset=args.reset, activate=True, **setting_values(args, ModelSettings))
    print(f"active model: {model}")
    if Path(model).is_dir() or found.complete:
        _prepare_files(model)
    return 0
