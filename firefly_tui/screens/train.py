"""The training screen: a form that launches `firefly train`, a live panel, and past runs.

A run is its own process (started with `start_new_session`, so it outlives the app) that writes
RUN_DIR/events.jsonl. The panel only ever tails that file (and the run's log), so a run started
yesterday, from the CLI, or before the app restarted looks the same as one started now. Stop sends
SIGINT: the trainer saves a checkpoint and writes a "done"/"stopped" event.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Header, Input, Label, ListItem, ListView, Select, Static

from firefly_core.training.events import DoneEvent, ErrorEvent, EvalEvent, StartEvent, StepEvent, TrainEvent

from .. import backend
from ..i18n import STRINGS, t
from ..widgets.footer import QuickFooter as Footer
from ..widgets.localized import localize_bindings
from ..widgets.loss_plot import LossPlot
from .dialogs import ButtonRow, ChoiceDialog, ConfirmDialog, DataCheckDialog, TextDialog
from .models import human_seconds

POLL_S = 0.5


@dataclass
class RunView:
    """What the panel knows about the run it shows, built from its typed events (training/events.py:
    every field is there with its type, so nothing here guesses)."""

    run_dir: Path
    tail: object  # EventTail
    train: list[tuple[float, float]] = field(default_factory=list)
    eval: list[tuple[float, float]] = field(default_factory=list)
    last_step: StepEvent | None = None
    start: StartEvent | None = None
    status: str = "waiting"  # waiting | running | done | stopped | error
    message: str = ""
    final_path: str | None = None
    log_size: int = -1

    def apply(self, events: list[TrainEvent]) -> None:
        for e in events:
            if isinstance(e, StartEvent):
                self.start, self.status = e, "running"
                # a resumed run starts again from its checkpoint: drop points after it
                self.train = [p for p in self.train if p[0] <= e.start_step]
                self.eval = [p for p in self.eval if p[0] <= e.start_step]
            elif isinstance(e, StepEvent):
                self.last_step = e
                if e.loss is not None:
                    self.train.append((e.step, e.loss))
            elif isinstance(e, EvalEvent):
                if e.loss is not None:
                    self.eval.append((e.step, e.loss))
            elif isinstance(e, DoneEvent):
                self.status = "stopped" if e.stopped else "done"
                self.message = e.message or ""
                self.final_path = e.final_path
            elif isinstance(e, ErrorEvent):
                self.status = "error"
                self.message = e.message + (f" — {e.hint}" if e.hint else "")

    @property
    def pid(self) -> int | None:
        return self.start.pid if self.start is not None else None


class RunItem(ListItem):
    def __init__(self, summary) -> None:
        loss = f"{summary.last_loss:.3f}" if summary.last_loss is not None else "-"
        status = t(f"run.{summary.status}") if f"run.{summary.status}" in STRINGS else summary.status
        text = f"{summary.path.name}  {status}  {summary.step}/{summary.total}  loss {loss}"
        super().__init__(Label(text))
        self.run_dir = Path(summary.path)


def _fmt_num(v, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


class TrainScreen(Screen):
    BINDINGS = [
        Binding("ctrl+k", "check", "train.check", priority=True),
        Binding("ctrl+l", "start", "train.start"),
        Binding("ctrl+x", "stop", "train.stop", priority=True),
        Binding("ctrl+t", "chat_with_model", "train.chat"),
        Binding("ctrl+r", "resume", "train.resume"),
        Binding("ctrl+g", "show_command", "train.show_command"),
    ]

    class Checked(Message):
        def __init__(self, key: tuple, text: str, ok: bool) -> None:
            super().__init__()
            self.key, self.text, self.ok = key, text, ok

    class RunsListed(Message):
        def __init__(self, runs: list, error: str | None) -> None:
            super().__init__()
            self.runs, self.error = runs, error

    def __init__(self) -> None:
        super().__init__(id="train")
        localize_bindings(self)
        self.view: RunView | None = None
        self.checked_key: tuple | None = None
        self.check_text = ""
        # The form comes back as the user left it (an output folder is always a new one).
        self.form_values: dict[str, str] = {k: v for k, v in backend.load_form_memory().items() if k != "out"}
        self.runs: list = []
        self.attached_once = False

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        from firefly_core.paths import runs_dir

        v = self.form_values
        default_out = str(runs_dir() / time.strftime("run-%Y%m%d-%H%M%S"))
        default_gpu = "0" if os.path.exists("/dev/nvidia0") else "cpu"
        yield Header()
        # Side by side when wide; below 100 columns (the "-narrow" screen class) the form stacks
        # above the chart and the whole body scrolls (app.tcss).
        with Horizontal(id="train-body"):
            with VerticalScroll(id="train-form"):
                yield Label(t("train.form"), classes="section")
                with Grid(classes="form"):
                    yield Label(t("train.model"))
                    yield Input(v.get("model", self.app.model_name or ""), id="f-model")
                    yield Label(t("train.data"))
                    yield Input(v.get("data", ""), placeholder="data/train.jsonl", id="f-data")
                    yield Label(t("train.out"))
                    yield Input(v.get("out", default_out), id="f-out")
                    yield Label(t("train.epochs"))
                    yield Input(v.get("epochs", "1"), id="f-epochs")
                    yield Label(t("train.max_steps"))
                    yield Input(v.get("max_steps", "0"), id="f-max_steps")
                    yield Label(t("train.lr"))
                    yield Input(v.get("lr", "2e-4"), id="f-lr")
                    yield Label(t("train.batch"))
                    yield Input(v.get("batch", "4"), id="f-batch")
                    yield Label(t("train.max_length"))
                    yield Input(v.get("max_length", "512"), id="f-max_length")
                    yield Label(t("train.gpu"))
                    yield Input(v.get("gpu", default_gpu), id="f-gpu")
                    yield Label(t("train.mode"))
                    yield Select([("LoRA", "lora"), ("full", "full")], value=v.get("mode", "lora"), allow_blank=False, id="f-mode")
                    yield Label(t("train.zero"))
                    yield Select([("-", "0"), ("ZeRO-2", "2"), ("ZeRO-3", "3")], value=v.get("zero", "0"), allow_blank=False, id="f-zero")
                    yield Label(t("train.extra"))
                    yield Input(v.get("extra", ""), id="f-extra")
                with ButtonRow(classes="buttons"):
                    yield Button(t("train.check"), id="check", compact=True)
                    yield Button(t("train.start"), id="start", variant="primary", compact=True)
                    yield Button(t("train.show_command"), id="show-command", compact=True)
                yield Static(self.check_text, id="check-summary", markup=False)
                yield Label(t("train.runs"), classes="section")
                yield ListView(id="runs")
            with Vertical(id="train-panel"):
                yield Label(t("train.no_run"), id="run-title")
                yield Label(t("train.legend"), id="legend")
                yield LossPlot(empty_text=t("train.no_data"), id="loss-plot")
                yield Static("", id="run-stats")
                with ButtonRow(id="run-buttons", classes="buttons"):
                    yield Button(t("train.stop"), id="stop", variant="error", compact=True)
                    yield Button(t("train.resume"), id="resume", compact=True)
                    yield Button(t("train.chat"), id="chat-final", variant="success", compact=True)
                    yield Button(t("train.clone"), id="clone", compact=True)
                yield Label(t("train.log"), classes="section")
                # Static in a scroll view (not Log): long lines wrap, and re-wrap on resize.
                with VerticalScroll(id="run-log"):
                    yield Static("", id="run-log-text", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.app.track_screen(self)
        self.title = t("app.title")
        self.sub_title = t("nav.train")
        self._refresh_runs()
        if self.view is not None:
            self.view.log_size = -1
            self.render_view()
        else:
            self._set_run_buttons(None)
        self.set_interval(POLL_S, self.poll)

    async def relabel(self) -> None:
        localize_bindings(self)
        self.form_values = self._read_form()
        await self.recompose()
        self.on_mount()

    def on_screen_suspend(self) -> None:
        self._remember_form()

    @on(Input.Changed, "#train-form Input")
    @on(Select.Changed, "#train-form Select")
    def _form_changed(self) -> None:
        """Remember the form half a second after the last change (so quitting loses nothing)."""
        timer = getattr(self, "_remember_timer", None)
        if timer is not None:
            timer.stop()
        self._remember_timer = self.set_timer(0.5, self._remember_form)

    def _remember_form(self) -> None:
        """Keep the form's values for the next start (the user's own file, written atomically)."""
        try:
            backend.save_form_memory(self._read_form())
        except Exception as e:  # noqa: BLE001 - a read-only config folder must not break the form
            self.log.warning(f"cannot remember the training form: {e}")

    def _read_form(self) -> dict[str, str]:
        out = {}
        for w in self.query("#train-form Input"):
            out[w.id[2:]] = w.value
        for w in self.query("#train-form Select"):
            out[w.id[2:]] = str(w.value)
        return out

    # -- runs list ----------------------------------------------------------------------------
    def _refresh_runs(self) -> None:
        self._runs_worker()

    @work(thread=True, exclusive=True, group="runs")
    def _runs_worker(self) -> None:
        try:
            runs, error = backend.list_runs(), None
        except Exception as e:  # noqa: BLE001
            runs, error = [], backend.format_error(e)
        self.post_message(self.RunsListed(runs, error))

    async def on_train_screen_runs_listed(self, message: RunsListed) -> None:
        self.runs = message.runs
        if message.error:
            self.query_one("#run-title", Label).update(t("train.unavailable", error=message.error))
            return
        lv = self.query_one("#runs", ListView)
        await lv.clear()
        await lv.extend(RunItem(r) for r in self.runs)
        if self.view is None and not self.attached_once and self.runs:
            # Re-attach: a run still going wins; otherwise show the newest one.
            running = [r for r in self.runs if r.status == "running"]
            self.attach((running or self.runs)[0].path)
        self.attached_once = True

    @on(ListView.Selected, "#runs")
    def _run_picked(self, event: ListView.Selected) -> None:
        if isinstance(event.item, RunItem):
            self.attach(event.item.run_dir)
            self.show_panel()

    # -- the live panel -----------------------------------------------------------------------
    def attach(self, run_dir: Path) -> None:
        """Show `run_dir`: read its events from the start, then keep tailing them."""
        run_dir = Path(run_dir)
        try:
            tail = backend.event_tail(run_dir)
        except Exception as e:  # noqa: BLE001
            self.query_one("#run-title", Label).update(t("train.unavailable", error=backend.format_error(e)))
            return
        self.view = RunView(run_dir, tail)
        self.query_one("#run-log-text", Static).update("")
        self.poll()

    def show_panel(self) -> None:
        """Bring the run's panel into view: below the form at narrow widths (a no-op when wide)."""
        self.query_one("#train-panel").scroll_visible(top=True, animate=False)

    def poll(self) -> None:
        view = self.view
        if view is None:
            return
        events = view.tail.poll()
        status_before = view.status
        if events:
            view.apply(events)
        if view.status == "running" and not events:
            pid = view.pid or backend.launched_pid(view.run_dir)
            if not backend.pid_alive(pid):
                # Give the last line a moment: a finished process may still be flushing.
                more = view.tail.poll()
                view.apply(more)
                if view.status == "running":
                    view.status, view.message = "error", "the training process ended without a final event"
        elif view.status == "waiting":
            pid = backend.launched_pid(view.run_dir)
            if pid and not backend.pid_alive(pid) and not events:
                view.status = "error"
                view.message = "the training process exited before starting (see the log)"
        self.render_view(events or view.status != status_before)
        if view.status != status_before and view.status in ("done", "stopped", "error"):
            self._refresh_runs()

    def render_view(self, changed: bool = True) -> None:
        view = self.view
        if view is None:
            return
        if changed:
            self.query_one("#loss-plot", LossPlot).set_data(view.train, view.eval)
            s, start = view.last_step, view.start
            mem = s.memory if s is not None else {}
            mem_text = " ".join(f"{k.replace('_gb', '')} {v:.2f} GB" for k, v in mem.items()) or "-"
            total = (s.total if s is not None else 0) or (start.total_steps if start is not None else 0) or "?"
            stats = t(
                "train.status",
                step=s.step if s is not None else (start.start_step if start is not None else 0),
                total=total,
                tps=_fmt_num(s.tokens_per_s, ".1f") if s is not None else "-",
                lr=_fmt_num(s.lr) if s is not None else "-",
                eta=human_seconds(s.eta) if s is not None else "-",
                mem=mem_text,
            )
            loss = f" · loss {s.loss:.4f}" if s is not None and s.loss is not None else ""
            ev = f" · eval {view.eval[-1][1]:.4f}" if view.eval else ""
            self.query_one("#run-stats", Static).update(stats + loss + ev)
            title = f"{view.run_dir.name}  ·  {t('train.state', status=t(f'run.{view.status}'))}"
            if view.message:
                title += f"  ·  {view.message}"
            label = self.query_one("#run-title", Label)
            label.update(title)
            label.set_class(view.status == "error", "failed")
            self._set_run_buttons(view)
        self._tail_log(view)

    def _set_run_buttons(self, view: RunView | None) -> None:
        """Which of Stop / Resume / Chat / Clone apply to the run on show."""
        live = view is not None and view.status in ("running", "waiting")
        self.query_one("#stop", Button).disabled = not live
        self.query_one("#resume", Button).disabled = not (view is not None and self._resumable(view))
        self.query_one("#chat-final", Button).disabled = view is None or live or not backend.run_models(view.run_dir)
        self.query_one("#clone", Button).disabled = view is None

    @staticmethod
    def _resumable(view: RunView) -> bool:
        """Stopped (or crashed) with a checkpoint to continue from, and no process on it now."""
        if view.status not in ("stopped", "error") or backend.pid_alive(backend.launched_pid(view.run_dir)):
            return False
        return any(label != "final" for label, _ in backend.run_models(view.run_dir))

    def _tail_log(self, view: RunView) -> None:
        path = view.run_dir / backend.LOG_FILE
        try:
            size = path.stat().st_size
        except OSError:
            return
        if size == view.log_size:
            return
        view.log_size = size
        self.query_one("#run-log-text", Static).update("\n".join(backend.tail_lines(path, 200)))
        self.query_one("#run-log", VerticalScroll).scroll_end(animate=False)

    # -- form actions -------------------------------------------------------------------------
    def _request(self) -> backend.TrainRequest | None:
        v = self._read_form()
        for key, label in (("model", "train.model"), ("data", "train.data"), ("out", "train.out")):
            if not v.get(key, "").strip():
                self.notify(t("train.need_field", field=t(label)), severity="warning")
                return None
        try:
            return backend.TrainRequest(
                model=v["model"].strip(),
                data=[p.strip() for p in v["data"].split(",") if p.strip()],
                out=Path(v["out"].strip()).expanduser(),
                gpu=v["gpu"].strip() or "cpu",
                method=v["mode"],
                epochs=float(v["epochs"] or 1),
                max_steps=int(v["max_steps"] or 0),
                lr=float(v["lr"]),
                batch_size=int(v["batch"]),
                max_length=int(v["max_length"]),
                zero=int(v["zero"]),
                extra=shlex.split(v.get("extra", "")),
            )
        except ValueError as e:
            self.notify(str(e), severity="error")
            return None

    @staticmethod
    def _check_key(req: backend.TrainRequest) -> tuple:
        return (req.model, tuple(req.data), req.max_length)

    @on(Button.Pressed)
    def _button(self, event: Button.Pressed) -> None:
        action = {
            "check": self.action_check,
            "start": self.action_start,
            "stop": self.action_stop,
            "resume": self.action_resume,
            "chat-final": self.action_chat_with_model,
            "clone": self.action_clone,
            "show-command": self.action_show_command,
        }.get(event.button.id)
        if action:
            action()

    def action_check(self, then_start: bool = False) -> None:
        req = self._request()
        if req is None:
            return
        self.check_text = t("train.checking")
        self.query_one("#check-summary", Static).update(self.check_text)
        self._remember_form()
        self._check_worker(req)

    @work(thread=True, exclusive=True, group="check")
    def _check_worker(self, req: backend.TrainRequest) -> None:
        key = self._check_key(req)
        try:
            report = backend.check_data(req.data, req.model, req.max_length)
        except Exception as e:  # noqa: BLE001
            self.post_message(self.Checked(key, t("train.check_failed", error=backend.format_error(e)), False))
            return
        self.post_message(self.Checked(key, data_summary(report), report.valid > 0))

    def on_train_screen_checked(self, message: Checked) -> None:
        self.check_text = message.text
        summary = self.query_one("#check-summary", Static)
        summary.update(message.text)
        summary.set_class(not message.ok, "failed")
        self.checked_key = message.key if message.ok else None

        def done(answer: str | None) -> None:
            if answer == "start":
                self.action_start()

        # Where the user is looking: a dialog over the form, with Start right there when it is fine.
        if self.is_current:
            self.app.push_screen(DataCheckDialog(message.text, ok=message.ok), done)
        else:  # they went elsewhere meanwhile: the summary waits on the form, a toast says so
            self.notify(message.text.splitlines()[0], title=t("train.check_title"), timeout=8)

    def action_start(self) -> None:
        req = self._request()
        if req is None:
            return
        if self.checked_key != self._check_key(req):
            # The summary is shown before any launch: check now (a dialog), start from there.
            self.action_check()
            return
        self._remember_form()
        try:
            backend.launch_training(req)
        except Exception as e:  # noqa: BLE001
            self.notify(t("train.launch_failed", error=backend.format_error(e)), severity="error")
            return
        self.notify(t("train.started", path=str(req.out)))
        self.checked_key = None
        self.query_one("#f-out", Input).value = str(req.out.parent / time.strftime("run-%Y%m%d-%H%M%S-2"))
        self.attach(req.out)
        self.show_panel()
        self._refresh_runs()

    def action_stop(self) -> None:
        view = self.view
        if view is None or view.status not in ("running", "waiting"):
            self.notify(t("train.not_running"), severity="warning")
            return

        def done(yes: bool | None) -> None:
            if not yes:
                return
            if self._signal_stop(view):
                self.notify(t("train.stopping"))
            else:
                self.notify(t("train.not_running"), severity="warning")

        self.app.push_screen(ConfirmDialog(t("train.stop_q", path=view.run_dir.name)), done)

    @staticmethod
    def _signal_stop(view: RunView) -> bool:
        import signal

        if backend.stop_training(view.run_dir):
            return True
        pid = view.pid  # a run started elsewhere (the CLI): its own pid
        if backend.pid_alive(pid):
            os.kill(pid, signal.SIGINT)
            return True
        return False

    def action_resume(self) -> None:
        """Continue a stopped run from its newest checkpoint (`firefly train --resume`)."""
        view = self.view
        if view is None:
            self.notify(t("train.select_run"), severity="warning")
            return
        if not self._resumable(view):
            self.notify(t("train.not_resumable"), severity="warning")
            return

        def done(yes: bool | None) -> None:
            if not yes:
                return
            try:
                backend.launch_argv(backend.resume_argv(view.run_dir), view.run_dir)
            except Exception as e:  # noqa: BLE001
                self.notify(t("train.launch_failed", error=backend.format_error(e)), severity="error")
                return
            self.notify(t("train.resumed", path=view.run_dir.name))
            self.attach(view.run_dir)
            self.show_panel()
            self._refresh_runs()

        self.app.push_screen(ConfirmDialog(t("train.resume_q", path=view.run_dir.name)), done)

    def action_clone(self) -> None:
        """The shown run's settings into the form, with a new output folder."""
        view = self.view
        if view is None:
            self.notify(t("train.select_run"), severity="warning")
            return
        try:
            values = backend.run_form_values(view.run_dir)
        except Exception as e:  # noqa: BLE001
            self.notify(backend.format_error(e), severity="error")
            return
        values["out"] = str(view.run_dir.parent / time.strftime("run-%Y%m%d-%H%M%S"))
        self._fill_form(values)
        self.checked_key = None
        self.notify(t("train.cloned", path=view.run_dir.name))

    def _fill_form(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            for w in self.query(f"#f-{key}"):
                if isinstance(w, Select):
                    try:
                        w.value = value
                    except Exception:  # noqa: BLE001 - a value the select does not offer
                        pass
                else:
                    w.value = value

    def action_show_command(self) -> None:
        """The exact `firefly train …` line of the form, to repeat the run in a script or on a server."""
        req = self._request()
        if req is None:
            return
        self.app.push_screen(TextDialog(t("train.command_title"), backend.command_line(req.argv())))

    def action_chat_with_model(self) -> None:
        """Chat with the run's final model, or pick one of its checkpoints (newest first)."""
        view = self.view
        if view is None:
            self.notify(t("train.select_run"), severity="warning")
            return
        run_dir = view.run_dir
        choices = backend.run_models(run_dir)
        if view.final_path and Path(view.final_path).is_dir() and not any(label == "final" for label, _ in choices):
            choices.insert(0, ("final", Path(view.final_path)))
        if not choices:
            self.notify(t("train.no_models", path=run_dir.name), severity="warning")
            return
        if len(choices) == 1 and choices[0][0] == "final":
            self.app.chat_with_model(str(choices[0][1]), title=run_dir.name)
            return
        paths = {str(path): label for label, path in choices}

        def done(picked: str | None) -> None:
            if picked:
                self._chat_with(run_dir, Path(picked), paths[picked])

        note = "" if choices[0][0] == "final" else t("train.pick_model_note")
        self.app.push_screen(
            ChoiceDialog(t("train.pick_model"), [(str(p), f"{label}  ({p.name})") for label, p in choices], note=note),
            done,
        )

    def _chat_with(self, run_dir: Path, path: Path, label: str) -> None:
        if label == "final":
            self.app.chat_with_model(str(path), title=run_dir.name)
            return
        self.notify(t("train.preparing_checkpoint", step=label))
        self._checkpoint_worker(run_dir, path, label)

    @work(thread=True, exclusive=True, group="checkpoint-model")
    def _checkpoint_worker(self, run_dir: Path, checkpoint: Path, label: str) -> None:
        try:
            folder = backend.checkpoint_model(run_dir, checkpoint)
        except Exception as e:  # noqa: BLE001
            self.app.call_from_thread(self.notify, backend.format_error(e), severity="error", timeout=10)
            return
        self.app.call_from_thread(self.app.chat_with_model, str(folder), f"{run_dir.name} · {label}")


def data_summary(report) -> str:
    """The data check as a few lines for the form (counts, problems, token lengths)."""
    lines = [
        f"{', '.join(report.files)}: {report.lines} lines, {report.valid} samples, {len(report.bad)} bad",
    ]
    if report.by_format:
        lines.append("formats: " + ", ".join(f"{k} {v}" for k, v in report.by_format.items()))
    for bad in report.bad[:3]:
        lines.append(f"  ✗ {bad}")
    tok = report.tokens
    if tok is not None and tok.lengths:
        lengths = sorted(tok.lengths)
        lines.append(
            f"tokens: median {lengths[len(lengths) // 2]}, max {lengths[-1]} "
            f"(max_length {report.max_length}); truncated {tok.truncated}, dropped {tok.cut_away}; "
            f"supervised {tok.supervised_tokens}"
        )
    return "\n".join(lines)
