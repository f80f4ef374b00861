"""The live panel of one training run: its state, loss curve, figures, log, and what can be done
with it (stop, resume, chat with what it made, clone its settings).

The panel owns one `firefly_core.training.run.Run` the way `ChatConversation` owns one chat; the
run's state comes only from the core's one rule (`Run.refresh`), so the panel, the runs list and the
CLI agree on status and step. Starting processes and heavy work (resume, turning a checkpoint into a
model folder) go through a `RunLauncher`, which tests replace with a recording one.

The Evaluate action (issue 26) goes into the button row marked below: a `Button(id="evaluate")`
whose press posts `RunPanel.EvaluateRequested(run)` (see `_button`), handled by the screen.
"""

from __future__ import annotations

import math
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Label, Static

from firefly_core.training.config import TrainConfig
from firefly_core.training.run import Run, TrainRequest, start_run
from firefly_core.errors import format_error

from ..i18n import t
from ..screens.dialogs import ButtonRow, ChoiceDialog, ConfirmDialog
from ..screens.models import human_seconds
from .loss_plot import LossPlot
from .run_evaluation import RunEvaluation

POLL_S = 0.5


class RunLauncher:
    """What starts a process or heavy work for a run (the seam tests replace)."""

    def start(self, request: TrainRequest, config: TrainConfig) -> Run:
        """`firefly train` for a new run, its folder checked by the CLI's rule first."""
        return start_run(request, config)

    def resume(self, run: Run) -> None:
        run.resume()

    def checkpoint_model(self, run: Run, checkpoint: Path) -> Path:
        return run.checkpoint_model(checkpoint)


def _num(v, spec: str = ".3g") -> str:
    return "-" if v is None or not isinstance(v, (int, float)) else format(v, spec)


def stats_text(run: Run) -> str:
    """The figures under the chart: progress, speed, memory; the loss, and what the method adds
    (DPO's reward accuracy and margin); the last evaluation with its perplexity."""
    s = run.state.last_step
    mem = s.memory if s is not None else {}
    mem_text = " ".join(f"{k.replace('_gb', '')} {v:.2f} GB" for k, v in mem.items()) or "-"
    text = t(
        "train.status",
        step=run.state.step,
        total=run.state.total or "?",
        tps=_num(s.tokens_per_s, ".1f") if s is not None else "-",
        lr=_num(s.lr) if s is not None else "-",
        eta=human_seconds(s.eta) if s is not None else "-",
        mem=mem_text,
    )
    if s is not None and s.loss is not None:
        text += f" · loss {s.loss:.4f}"
    accuracy, margin = getattr(s, "reward_accuracy", None), getattr(s, "reward_margin", None)
    if accuracy is not None or margin is not None:
        text += " · " + t("train.rewards", accuracy=_num(accuracy, ".2f"), margin=_num(margin, ".3f"))
    ev = run.state.last_eval
    if ev is not None and ev.loss is not None:
        text += f" · eval {ev.loss:.4f}"
        if ev.perplexity is not None and math.isfinite(ev.perplexity):
            text += " (" + t("train.perplexity", ppl=_num(ev.perplexity, ".4g")) + ")"
    return text


class RunPanel(Vertical):
    """The panel; the screen calls `attach(run_dir)` and its actions (stop, resume, chat, clone)."""

    class Changed(Message):
        """The run's status or step changed (the runs list follows)."""

        def __init__(self, run: Run, status_changed: bool) -> None:
            super().__init__()
            self.run, self.status_changed = run, status_changed

    class CloneRequested(Message):
        def __init__(self, run: Run, request: TrainRequest) -> None:
            super().__init__()
            self.run, self.request = run, request

    class EvaluateRequested(Message):
        """Evaluate what the run made (posted by the Evaluate button; the screen handles it)."""

        def __init__(self, run: Run) -> None:
            super().__init__()
            self.run = run

    def __init__(self, launcher: RunLauncher | None = None, *, id: str = "train-panel") -> None:
        super().__init__(id=id)
        self.launcher = launcher or RunLauncher()
        self.run: Run | None = None
        self._log_size = -1
        self._seen: tuple = ()

    def compose(self) -> ComposeResult:
        yield Label(t("train.no_run"), id="run-title")
        yield Label(t("train.legend"), id="legend")
        yield LossPlot(empty_text=t("train.no_data"), id="loss-plot")
        yield Static("", id="run-stats", markup=False)
        yield Static("", id="run-alarm", markup=False, classes="failed")
        with ButtonRow(id="run-buttons", classes="buttons"):
            yield Button(t("train.stop"), id="stop", variant="error", compact=True)
            yield Button(t("train.resume"), id="resume", compact=True)
            yield Button(t("train.chat"), id="chat-final", variant="success", compact=True)
            yield Button(t("train.clone"), id="clone", compact=True)
            yield Button(t("train.evaluate"), id="evaluate", compact=True)
        yield RunEvaluation()
        yield Label(t("train.log"), classes="section")
        # Static in a scroll view (not Log): long lines wrap, and re-wrap on resize.
        with VerticalScroll(id="run-log"):
            yield Static("", id="run-log-text", markup=False)

    def on_mount(self) -> None:
        self.query_one("#run-alarm").display = False
        self.set_interval(POLL_S, self.poll)
        if self.run is not None:
            self._log_size = -1
            self._seen = ()
        self.render_run()

    # -- following the run ------------------------------------------------------------------------
    def attach(self, run_dir: Path) -> None:
        """Show `run_dir`: read its events from the start, then keep following them."""
        self.run = Run(Path(run_dir))
        self._log_size, self._seen = -1, ()
        self.query_one("#run-log-text", Static).update("")
        self.query_one(RunEvaluation).show(self.run.path)
        self.poll()

    def poll(self) -> None:
        run = self.run
        if run is None:
            return
        run.refresh()
        self.render_run()
        self._tail_log(run)

    def render_run(self) -> None:
        run = self.run
        if run is None:
            self._set_buttons(None)
            return
        state = run.state
        seen = (state.status, state.step, len(state.train), len(state.eval), state.last_event_time, state.message)
        if seen == self._seen:
            return
        status_changed = not self._seen or self._seen[0] != state.status
        step_changed = status_changed or self._seen[1] != state.step
        self._seen = seen
        self._set_buttons(run)
        self.query_one("#loss-plot", LossPlot).set_data(state.train, state.eval)
        self.query_one("#run-stats", Static).update(stats_text(run))
        alarm = self.query_one("#run-alarm", Static)
        alarm.update(state.loss_alarm)
        alarm.display = bool(state.loss_alarm)
        title = f"{run.name}  ·  {t('train.state', status=t(f'run.{state.status}'))}"
        if state.detail:
            title += f"  ·  {state.detail}"
        label = self.query_one("#run-title", Label)
        label.update(title)
        label.set_class(state.status == "error", "failed")
        if step_changed:
            self.post_message(self.Changed(run, status_changed))

    def _set_buttons(self, run: Run | None) -> None:
        """Which of Stop / Resume / Chat / Clone apply to the run on show."""
        live = run is not None and run.status in ("running", "waiting")
        self.query_one("#stop", Button).disabled = not live
        self.query_one("#resume", Button).disabled = not (run is not None and run.resumable)
        self.query_one("#chat-final", Button).disabled = run is None or live or not run.models()
        self.query_one("#clone", Button).disabled = run is None
        self.query_one("#evaluate", Button).disabled = run is None or live or not run.models()

    def _tail_log(self, run: Run) -> None:
        try:
            size = run.log_path.stat().st_size
        except OSError:
            return
        if size == self._log_size:
            return
        self._log_size = size
        self.query_one("#run-log-text", Static).update("\n".join(run.log_tail(200)))
        self.query_one("#run-log", VerticalScroll).scroll_end(animate=False)

    # -- actions ----------------------------------------------------------------------------------
    @on(Button.Pressed, "#run-buttons Button")
    def _button(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "evaluate":
            if self.run is not None:
                self.post_message(self.EvaluateRequested(self.run))
            return
        action = {"stop": self.stop, "resume": self.resume, "chat-final": self.chat, "clone": self.clone}
        if event.button.id in action:
            action[event.button.id]()

    def stop(self) -> None:
        run = self.run
        if run is None or run.status not in ("running", "waiting"):
            self.notify(t("train.not_running"), severity="warning")
            return

        def done(yes: bool | None) -> None:
            if not yes:
                return
            run.refresh()
            if run.stop():
                self.notify(t("train.stopping"))
            else:
                self.notify(t("train.not_running"), severity="warning")

        self.app.push_screen(ConfirmDialog(t("train.stop_q", path=run.name)), done)

    def resume(self) -> None:
        """Continue a stopped run from its newest checkpoint (`firefly train --resume`)."""
        run = self.run
        if run is None:
            self.notify(t("train.select_run"), severity="warning")
            return
        if not run.resumable:
            self.notify(t("train.not_resumable"), severity="warning")
            return

        def done(yes: bool | None) -> None:
            if not yes:
                return
            try:
                self.launcher.resume(run)
            except Exception as e:  # noqa: BLE001 - shown, not raised
                self.notify(t("train.launch_failed", error=format_error(e)), severity="error")
                return
            self.notify(t("train.resumed", path=run.name))
            self.attach(run.path)

        self.app.push_screen(ConfirmDialog(t("train.resume_q", path=run.name)), done)

    def clone(self) -> None:
        """The run's settings for a new run (the screen puts them into the form)."""
        run = self.run
        if run is None:
            self.notify(t("train.select_run"), severity="warning")
            return
        try:
            request = run.clone()
        except Exception as e:  # noqa: BLE001
            self.notify(format_error(e), severity="error")
            return
        self.post_message(self.CloneRequested(run, request))

    def chat(self) -> None:
        """Chat with the run's final model, or pick one of its checkpoints (newest first)."""
        run = self.run
        if run is None:
            self.notify(t("train.select_run"), severity="warning")
            return
        choices = run.models()
        if not choices:
            self.notify(t("train.no_models", path=run.name), severity="warning")
            return
        if len(choices) == 1 and choices[0][0] == "final":
            self.app.chat_with_model(str(choices[0][1]), title=run.name)
            return
        labels = {str(path): label for label, path in choices}

        def done(picked: str | None) -> None:
            if picked:
                self._chat_with(run, Path(picked), labels[picked])

        note = "" if choices[0][0] == "final" else t("train.pick_model_note")
        self.app.push_screen(
            ChoiceDialog(t("train.pick_model"), [(str(p), f"{label}  ({p.name})") for label, p in choices], note=note),
            done,
        )

    def _chat_with(self, run: Run, path: Path, label: str) -> None:
        if label == "final":
            self.app.chat_with_model(str(path), title=run.name)
            return
        self.notify(t("train.preparing_checkpoint", step=label))
        self._checkpoint_worker(run, path, label)

    @work(thread=True, exclusive=True, group="checkpoint-model")
    def _checkpoint_worker(self, run: Run, checkpoint: Path, label: str) -> None:
        try:
            folder = self.launcher.checkpoint_model(run, checkpoint)
        except Exception as e:  # noqa: BLE001 - shown, not raised
            self.app.call_from_thread(self.notify, format_error(e), severity="error", timeout=10)
            return
        self.app.call_from_thread(self.app.chat_with_model, str(folder), f"{run.name} · {label}")
