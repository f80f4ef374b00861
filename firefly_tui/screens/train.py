"""The training screen: the new-run form (`widgets/train_form.py`), the past runs, and the live
panel of one run (`widgets/run_panel.py`).

A run is its own process that writes RUN_DIR/events.jsonl; the panel follows that file through
core's `Run`, so a run started yesterday, from the CLI, or before the app restarted looks the same
as one started now. This screen only wires the parts: it starts what the form asks for, shows the
run picked in the list, and keeps the list's rows in step with the panel.
"""

from __future__ import annotations

import time
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Header, Label, ListItem, ListView

from firefly_core.training.run import Run, command_line, list_runs
from firefly_core.errors import format_error

from ..i18n import STRINGS, t
from ..widgets.footer import QuickFooter as Footer
from ..widgets.localized import localize_bindings
from ..widgets.run_panel import RunLauncher, RunPanel
from ..widgets.train_form import TrainForm, config_of, values_from_request
from .dialogs import ChoiceDialog, PromptDialog, TextDialog


def run_row(run: Run) -> str:
    s = run.summary()
    loss = f"{s.last_loss:.3f}" if s.last_loss is not None else "-"
    status = t(f"run.{s.status}") if f"run.{s.status}" in STRINGS else s.status
    return f"{run.name}  {status}  {s.step}/{s.total or '?'}  loss {loss}"


class RunItem(ListItem):
    def __init__(self, run: Run) -> None:
        super().__init__(Label(run_row(run)))
        self.run_dir = Path(run.path)

    def update(self, run: Run) -> None:
        self.query_one(Label).update(run_row(run))


class TrainScreen(Screen):
    BINDINGS = [
        Binding("ctrl+k", "check", "train.check", priority=True),
        Binding("ctrl+l", "start", "train.start"),
        Binding("ctrl+x", "stop", "train.stop", priority=True),
        Binding("ctrl+t", "chat_with_model", "train.chat"),
        Binding("ctrl+r", "resume", "train.resume"),
        Binding("ctrl+g", "show_command", "train.show_command"),
    ]

    class RunsListed(Message):
        def __init__(self, runs: list[Run], error: str | None) -> None:
            super().__init__()
            self.runs, self.error = runs, error

    def __init__(self, launcher: RunLauncher | None = None) -> None:
        super().__init__(id="train")
        localize_bindings(self)
        self._launcher = launcher or RunLauncher()
        self.form_values: dict[str, str] | None = None  # None: the remembered form
        self.shown: Path | None = None  # the run on the panel (kept across a relabel)
        self.runs: list[Run] = []
        self.attached_once = False

    @property
    def launcher(self) -> RunLauncher:
        return self._launcher

    @launcher.setter
    def launcher(self, value: RunLauncher) -> None:
        """Tests pass a recording launcher here; the panel uses the same one."""
        self._launcher = value
        for panel in self.query(RunPanel):
            panel.launcher = value

    @property
    def form(self) -> TrainForm:
        return self.query_one(TrainForm)

    @property
    def panel(self) -> RunPanel:
        return self.query_one(RunPanel)

    @property
    def run(self) -> Run | None:
        """The run on the panel."""
        return self.panel.run if self.is_mounted else None

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        # Side by side when wide; below 100 columns (the "-narrow" screen class) the form stacks
        # above the chart and the whole body scrolls (app.tcss).
        with Horizontal(id="train-body"):
            with Vertical(id="train-side"):
                yield TrainForm(self.form_values)
                yield Label(t("train.runs"), classes="section", id="runs-title")
                yield ListView(id="runs")
            yield RunPanel(self._launcher)
        yield Footer()

    def on_mount(self) -> None:
        self.app.track_screen(self)
        self.title = t("app.title")
        self.sub_title = t("nav.train")
        self._refresh_runs()
        if self.shown is not None:
            self.panel.attach(self.shown)

    async def relabel(self) -> None:
        localize_bindings(self)
        self.form_values = self.form.values()
        self.shown = self.run.path if self.run is not None else None
        await self.recompose()
        self.on_mount()

    def on_screen_suspend(self) -> None:
        self.form.remember()

    # -- runs list ----------------------------------------------------------------------------
    def _refresh_runs(self) -> None:
        self._runs_worker()

    @work(thread=True, exclusive=True, group="runs")
    def _runs_worker(self) -> None:
        try:
            runs, error = list_runs(), None
        except Exception as e:  # noqa: BLE001 - shown on the panel
            runs, error = [], format_error(e)
        self.post_message(self.RunsListed(runs, error))

    async def on_train_screen_runs_listed(self, message: RunsListed) -> None:
        self.runs = message.runs
        if message.error:
            self.query_one("#run-title", Label).update(t("train.unavailable", error=message.error))
            return
        lv = self.query_one("#runs", ListView)
        await lv.clear()
        await lv.extend(RunItem(r) for r in self.runs)
        if self.run is None and not self.attached_once and self.runs:
            # Re-attach: a run still going wins; otherwise show the newest one.
            running = [r for r in self.runs if r.status in ("running", "waiting")]
            self.panel.attach((running or self.runs)[0].path)
        self.attached_once = True

    @on(ListView.Selected, "#runs")
    def _run_picked(self, event: ListView.Selected) -> None:
        if isinstance(event.item, RunItem):
            self.panel.attach(event.item.run_dir)
            self.show_panel()

    @on(RunPanel.Changed)
    def _run_changed(self, message: RunPanel.Changed) -> None:
        """The list's row of the run on the panel says what the panel says (same state)."""
        for item in self.query(RunItem):
            if item.run_dir == message.run.path:
                item.update(message.run)
                return
        if message.status_changed:
            self._refresh_runs()  # a run the list does not show yet (just started)

    def show_panel(self) -> None:
        """Bring the run's panel into view: below the form at narrow widths (a no-op when wide)."""
        self.panel.scroll_visible(top=True, animate=False)

    # -- form -------------------------------------------------------------------------------------
    def action_use_sample(self) -> None:
        """Fill the form's Data field with the sample file shipped with firefly."""
        path = self.form.use_sample_data()
        self.notify(t("train.sample_used", path=path))

    def action_check(self) -> None:
        self.form.check()

    def action_start(self) -> None:
        self.form.start()

    @on(TrainForm.StartRequested)
    def _start(self, message: TrainForm.StartRequested) -> None:
        req = message.request
        try:
            self.launcher.start(req, config_of(req))
        except Exception as e:  # noqa: BLE001 - shown, not raised
            self.notify(t("train.launch_failed", error=format_error(e)), severity="error")
            return
        self.notify(t("train.started", path=str(req.out)))
        self.form.started(req)
        self.panel.attach(req.out)
        self.show_panel()
        self._refresh_runs()

    def action_show_command(self) -> None:
        """The exact `firefly train …` line of the form, to repeat the run in a script or on a server."""
        req = self.form.request()
        if req is None:
            return
        self.app.push_screen(TextDialog(t("train.command_title"), command_line(req.argv())))

    # -- the run on the panel ---------------------------------------------------------------------
    def action_stop(self) -> None:
        self.panel.stop()

    def action_resume(self) -> None:
        self.panel.resume()

    def action_chat_with_model(self) -> None:
        self.panel.chat()

    def action_clone(self) -> None:
        self.panel.clone()

    @on(RunPanel.EvaluateRequested)
    def _evaluate(self, message: RunPanel.EvaluateRequested) -> None:
        """Evaluate: compare base and final/, and with an exam folder score both (issue 26)."""
        from ..widgets.run_evaluation import RunEvaluation

        box = self.panel.query_one(RunEvaluation)
        run = message.run
        if box.running is not None:
            self.notify(t("train.eval_busy"), severity="warning")
            return

        def with_exam(path: str | None) -> None:
            if path:
                box.start(run.path, path)

        def picked(choice: str | None) -> None:
            if choice == "compare":
                box.start(run.path, None)
            elif choice == "exam":
                self.app.push_screen(PromptDialog(t("train.eval_exam_path"), placeholder="~/ceval"), with_exam)

        self.app.push_screen(
            ChoiceDialog(t("train.eval_how"), [("compare", t("train.eval_compare_only")), ("exam", t("train.eval_with_exam"))]),
            picked,
        )

    @on(RunPanel.CloneRequested)
    def _clone(self, message: RunPanel.CloneRequested) -> None:
        """The shown run's settings into the form, with a new output folder."""
        values = values_from_request(message.request)
        values["out"] = str(message.run.path.parent / time.strftime("run-%Y%m%d-%H%M%S"))
        self.form.fill(values)
        self.notify(t("train.cloned", path=message.run.name))
