"""The "new run" form of the Train screen: the fields of a `firefly train` command line, the data
check before a start, the command line itself, and the form's memory between app starts.

The form only collects: it turns its fields into a core `TrainRequest` (and back, for a clone),
checks the data in a worker, and posts `TrainForm.StartRequested` once the check was seen; the
screen starts the run. The command line is parsed by the very parser `firefly train` uses, so the
app refuses a folder or an option exactly as the CLI would.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Grid, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Input, Label, Select, Static

from firefly_core.errors import ConfigError, format_error
from firefly_core.training.config import METHODS, TrainConfig
from firefly_core.training.run import TrainRequest

from ..i18n import t
from ..screens.dialogs import ButtonRow, DataCheckDialog

# The form's fields (widget ids "f-KEY", labels "train.KEY"): what its memory keeps.
FIELDS = ("model", "data", "out", "method", "mode", "packing", "epochs", "max_steps", "lr", "batch",
          "max_length", "gpu", "zero", "extra")
MEMORY_FILE = "app-train-form.json"


def method_options() -> list[tuple[str, str]]:
    return [(t(f"train.method_{m}"), m) for m in METHODS]


def default_out() -> str:
    from firefly_core.paths import runs_dir

    return str(runs_dir() / time.strftime("run-%Y%m%d-%H%M%S"))


def request_from_values(v: dict[str, str]) -> TrainRequest:
    """The form's values as a request; ValueError names the field that is not a number."""

    def number(key: str, kind, default: str):
        text = (v.get(key) or "").strip() or default
        try:
            return kind(text)
        except ValueError:
            raise ValueError(t("train.bad_number", field=t(f"train.{key}"), value=text)) from None

    return TrainRequest(
        model=v.get("model", "").strip(),
        data=[p.strip() for p in v.get("data", "").split(",") if p.strip()],
        out=Path(v.get("out", "").strip()).expanduser(),
        gpu=v.get("gpu", "").strip() or "cpu",
        method=v.get("method") or "sft",
        lora=v.get("mode", "lora") == "lora",
        packing=v.get("packing") == "on",
        epochs=number("epochs", float, "1"),
        max_steps=number("max_steps", int, "0"),
        lr=number("lr", float, "2e-4"),
        batch_size=number("batch", int, "4"),
        max_length=number("max_length", int, "512"),
        zero=int(v.get("zero") or 0),
        extra=shlex.split(v.get("extra", "")),
    )


def values_from_request(req: TrainRequest) -> dict[str, str]:
    """A request (a clone of a past run) as the form's values."""

    def num(x) -> str:
        return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)

    return {
        "model": req.model,
        "data": ", ".join(req.data),
        "out": str(req.out),
        "method": req.method,
        "mode": "lora" if req.lora else "full",
        "packing": "on" if req.packing else "off",
        "epochs": num(req.epochs),
        "max_steps": num(req.max_steps),
        "lr": str(req.lr),
        "batch": str(req.batch_size),
        "max_length": str(req.max_length),
        "gpu": req.gpu,
        "zero": str(req.zero),
        "extra": shlex.join(req.extra),
    }


class _Refusal(argparse.ArgumentParser):
    """`firefly train`'s parser, answering a bad option with a ConfigError instead of exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"firefly train: {message}", "fix the extra options (see: firefly train --help)")


def config_of(request: TrainRequest) -> TrainConfig:
    """What `firefly <request.argv()>` resolves to: parsed by the very parser the CLI uses."""
    from firefly_core.training.config import load_config

    from ..commands import train

    parser = _Refusal(prog="firefly")
    train.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(request.argv())
    return load_config(args.config, train._overrides(args))


# -- memory ---------------------------------------------------------------------------------------
def memory_path() -> Path:
    from firefly_core.paths import config_dir

    return config_dir() / MEMORY_FILE


def load_memory() -> dict[str, str]:
    """The form's last values (the app remembers them between starts); {} if none or unreadable."""
    try:
        data = json.loads(memory_path().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if k in FIELDS and isinstance(v, str)}


def save_memory(values: dict[str, str]) -> None:
    from firefly_core.atomic import write_json

    write_json(memory_path(), {k: v for k, v in values.items() if k in FIELDS and isinstance(v, str)})


# -- the widget -----------------------------------------------------------------------------------
class TrainForm(VerticalScroll):
    """The form. The screen calls `check()`, `start()`, `command_line()` and `fill()`."""

    class StartRequested(Message):
        """The user asked to start, and has seen the data check of exactly these values."""

        def __init__(self, request: TrainRequest) -> None:
            super().__init__()
            self.request = request

    class Checked(Message):
        def __init__(self, key: tuple, text: str, ok: bool) -> None:
            super().__init__()
            self.key, self.text, self.ok = key, text, ok

    def __init__(self, values: dict[str, str] | None = None, *, id: str = "train-form") -> None:
        super().__init__(id=id)
        # The form comes back as the user left it (an output folder is always a new one).
        self.initial = {k: v for k, v in (load_memory() if values is None else values).items() if k != "out"}
        self.checked_key: tuple | None = None
        self.check_text = ""

    def compose(self) -> ComposeResult:
        v = self.initial
        default_gpu = "0" if os.path.exists("/dev/nvidia0") else "cpu"

        def field(key: str, widget) -> ComposeResult:
            yield Label(t(f"train.{key}"))
            yield widget

        yield Label(t("train.form"), classes="section")
        with Grid(classes="form"):
            yield from field("model", Input(v.get("model", self.app.model_name or ""), placeholder=t("train.model_hint"),
                                             id="f-model", compact=True))
            yield from field("data", Input(v.get("data", ""), placeholder="data/train.jsonl", id="f-data", compact=True))
            yield from field("out", Input(v.get("out", default_out()), id="f-out", compact=True))
            yield from field("method", Select(method_options(), value=_pick(v.get("method"), METHODS),
                                              allow_blank=False, id="f-method", compact=True))
            yield from field("mode", Select([("LoRA", "lora"), (t("train.mode_full"), "full")],
                                            value=_pick(v.get("mode"), ("lora", "full")), allow_blank=False,
                                            id="f-mode", compact=True))
            yield from field("packing", Select([(t("train.packing_off"), "off"), (t("train.packing_on"), "on")],
                                               value=_pick(v.get("packing"), ("off", "on")), allow_blank=False,
                                               id="f-packing", compact=True, disabled=v.get("method") == "dpo"))
            yield from field("epochs", Input(v.get("epochs", "1"), id="f-epochs", compact=True))
            yield from field("max_steps", Input(v.get("max_steps", "0"), id="f-max_steps", compact=True))
            yield from field("lr", Input(v.get("lr", "2e-4"), id="f-lr", compact=True))
            yield from field("batch", Input(v.get("batch", "4"), id="f-batch", compact=True))
            yield from field("max_length", Input(v.get("max_length", "512"), id="f-max_length", compact=True))
            yield from field("gpu", Input(v.get("gpu", default_gpu), id="f-gpu", compact=True))
            yield from field("zero", Select([("-", "0"), ("ZeRO-2", "2"), ("ZeRO-3", "3")],
                                            value=_pick(v.get("zero"), ("0", "2", "3")), allow_blank=False,
                                            id="f-zero", compact=True))
            yield from field("extra", Input(v.get("extra", ""), placeholder=t("train.extra_hint"), id="f-extra",
                                             compact=True))
        with ButtonRow(classes="buttons"):
            yield Button(t("train.check"), id="check", compact=True)
            yield Button(t("train.start"), id="start", variant="primary", compact=True)
            yield Button(t("train.show_command"), id="show-command", compact=True)
        summary = Static(self.check_text, id="check-summary", markup=False)
        summary.display = bool(self.check_text)  # no empty rows above the runs list
        yield summary

    # -- values -----------------------------------------------------------------------------------
    def values(self) -> dict[str, str]:
        out = {}
        for w in self.query(Input):
            out[w.id[2:]] = w.value
        for w in self.query(Select):
            out[w.id[2:]] = str(w.value)
        return out

    def fill(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            for w in self.query(f"#f-{key}"):
                if isinstance(w, Select):
                    if any(v == value for _, v in w._options):
                        w.value = value
                else:
                    w.value = value
        self.checked_key = None

    def use_sample_data(self) -> str:
        """Put the sample file shipped with firefly (for the chosen method) in the Data field, so a
        first run needs no data of one's own; returns the path. Pretraining reads any text, so the
        instruction sample serves it too."""
        from firefly_core.samples import sample_path

        method = str(self.query_one("#f-method", Select).value)
        path = str(sample_path("preferences" if method == "dpo" else "instructions"))
        self.query_one("#f-data", Input).value = path
        return path

    def request(self) -> TrainRequest | None:
        """The form as a request, or None after telling the user what is missing or wrong."""
        v = self.values()
        for key in ("model", "data", "out"):
            if not v.get(key, "").strip():
                self.notify(t("train.need_field", field=t(f"train.{key}")), severity="warning")
                return None
        try:
            return request_from_values(v)
        except ValueError as e:
            self.notify(str(e), severity="error")
            return None

    def remember(self) -> None:
        """Keep the form's values for the next start (the user's own file, written atomically)."""
        try:
            save_memory(self.values())
        except Exception as e:  # noqa: BLE001 - a read-only config folder must not break the form
            self.log.warning(f"cannot remember the training form: {e}")

    @on(Input.Changed)
    @on(Select.Changed)
    def _changed(self) -> None:
        """Remember the form half a second after the last change (so quitting loses nothing)."""
        timer = getattr(self, "_remember_timer", None)
        if timer is not None:
            timer.stop()
        self._remember_timer = self.set_timer(0.5, self.remember)

    @on(Select.Changed, "#f-method")
    def _method_changed(self, event: Select.Changed) -> None:
        """A DPO pair is two rows (chosen, rejected) and is never packed: Packing is off there."""
        packing = self.query_one("#f-packing", Select)
        if event.value == "dpo":
            packing.value = "off"
        packing.disabled = event.value == "dpo"

    # -- actions ----------------------------------------------------------------------------------
    @staticmethod
    def _check_key(req: TrainRequest) -> tuple:
        return (req.model, tuple(req.data), req.max_length, req.method)

    def check(self) -> None:
        req = self.request()
        if req is None:
            return
        self.check_text = t("train.checking")
        summary = self.query_one("#check-summary", Static)
        summary.update(self.check_text)
        summary.display = True
        self.remember()
        self._check_worker(req)

    @work(thread=True, exclusive=True, group="check")
    def _check_worker(self, req: TrainRequest) -> None:
        key = self._check_key(req)
        try:
            report = req.check_data()
        except Exception as e:  # noqa: BLE001 - shown on the form
            self.post_message(self.Checked(key, t("train.check_failed", error=format_error(e)), False))
            return
        self.post_message(self.Checked(key, data_summary(report), report.valid > 0))

    def on_train_form_checked(self, message: Checked) -> None:
        self.check_text = message.text
        summary = self.query_one("#check-summary", Static)
        summary.update(message.text)
        summary.set_class(not message.ok, "failed")
        self.checked_key = message.key if message.ok else None

        def done(answer: str | None) -> None:
            if answer == "start":
                self.start()

        # Where the user is looking: a dialog over the form, with Start right there when it is fine.
        if self.screen.is_current:
            self.app.push_screen(DataCheckDialog(message.text, ok=message.ok), done)
        else:  # they went elsewhere meanwhile: the summary waits on the form, a toast says so
            self.notify(message.text.splitlines()[0], title=t("train.check_title"), timeout=8)

    def start(self) -> None:
        """Start, once the data check of these very values was shown (else check first)."""
        req = self.request()
        if req is None:
            return
        if self.checked_key != self._check_key(req):
            self.check()  # the summary is shown before any launch; Start is in its dialog
            return
        self.remember()
        self.post_message(self.StartRequested(req))

    def started(self, request: TrainRequest) -> None:
        """The run is on its way: the next one gets a new folder and a new check."""
        self.checked_key = None
        self.query_one("#f-out", Input).value = str(Path(request.out).parent / time.strftime("run-%Y%m%d-%H%M%S-2"))

    @on(Button.Pressed, "#check")
    def _check_pressed(self) -> None:
        self.check()

    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        self.start()


def _pick(value: str | None, allowed: tuple[str, ...]) -> str:
    return value if value in allowed else allowed[0]


def data_summary(report) -> str:
    """The data check as a few lines for the form (counts, problems, token lengths), for SFT rows,
    DPO preference pairs or pretraining documents (`TrainRequest.check_data`)."""
    files = ", ".join(report.files)
    if hasattr(report, "prompts_differ"):  # preference pairs
        lines = [f"{files}: {report.lines} lines, {report.valid} pairs, {len(report.bad)} bad; "
                 f"prompts differ in {report.prompts_differ}"]
    elif hasattr(report, "documents"):  # raw text
        lines = [f"{files}: {report.documents} documents, {len(report.bad)} bad"]
    else:
        lines = [f"{files}: {report.lines} lines, {report.valid} samples, {len(report.bad)} bad"]
    if getattr(report, "by_format", None):
        lines.append("formats: " + ", ".join(f"{k} {v}" for k, v in report.by_format.items()))
    for bad in report.bad[:3]:
        lines.append(f"  ✗ {bad}")
    tok = report.tokens
    if tok is not None and tok.lengths:
        lengths = sorted(tok.lengths)
        if hasattr(tok, "pieces"):  # documents: every token is trained
            lines.append(f"tokens: {tok.tokens} in {tok.pieces} pieces of at most {report.max_length}; "
                         f"median document {lengths[len(lengths) // 2]}, max {lengths[-1]}")
        else:
            lines.append(
                f"tokens: median {lengths[len(lengths) // 2]}, max {lengths[-1]} "
                f"(max_length {report.max_length}); truncated {tok.truncated}, dropped {tok.cut_away}; "
                f"supervised {tok.supervised_tokens}"
            )
    return "\n".join(lines)
