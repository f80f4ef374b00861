"""The Evaluate part of a run's panel: what the last evaluation of the run found, and a progress bar
while one runs.

The work is `firefly_core.evaluation.run_eval.evaluate_run` (base vs final: compare's checks, and
`eval` of both when an exam folder is given) in a worker thread that only posts messages; its result
is saved in the run folder by the core, so reopening the run shows it again (`show`).
"""

from __future__ import annotations

import threading
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Label, ProgressBar, Static

from firefly_core.errors import format_error

from ..i18n import t


class RunEvaluation(Vertical):
    """Summary of `evaluation.json` of the run on show, and the bar of one running evaluation."""

    DEFAULT_CSS = """
    RunEvaluation { height: auto; }
    RunEvaluation #eval-progress { width: 1fr; }
    RunEvaluation #eval-summary { height: auto; }
    """

    class Progressed(Message):
        def __init__(self, run_dir: Path, step: str, done: int, total: int) -> None:
            super().__init__()
            self.run_dir, self.step, self.done, self.total = run_dir, step, done, total

    class Finished(Message):
        def __init__(self, run_dir: Path, error: str | None) -> None:
            super().__init__()
            self.run_dir, self.error = run_dir, error

    def __init__(self, *, id: str = "run-evaluation") -> None:
        super().__init__(id=id)
        self.run_dir: Path | None = None
        self.running: Path | None = None  # the run being evaluated (one at a time)
        self._cancel = threading.Event()

    def compose(self) -> ComposeResult:
        yield Label(t("train.eval_title"), classes="section", id="eval-title")
        yield ProgressBar(id="eval-progress", show_eta=True)
        yield Static("", id="eval-summary", markup=False)

    def on_mount(self) -> None:
        self.query_one("#eval-progress").display = False
        self.display = False

    def show(self, run_dir: Path | None) -> None:
        """The saved evaluation of `run_dir` (hidden when there is none and none is running)."""
        from firefly_core.evaluation.run_eval import load_evaluation, summary_lines

        self.run_dir = Path(run_dir) if run_dir is not None else None
        doc = load_evaluation(self.run_dir) if self.run_dir is not None else None
        lines = summary_lines(doc) if doc else []
        self.query_one("#eval-summary", Static).update("\n".join(lines))
        running_here = self.running is not None and self.running == self.run_dir
        self.query_one("#eval-progress").display = running_here
        self.display = bool(lines) or running_here

    def start(self, run_dir: Path, exam: str | None, benchmark: str = "ceval") -> bool:
        """Evaluate `run_dir` in a worker; False when another evaluation is still running."""
        if self.running is not None:
            return False
        self.running = Path(run_dir)
        self._cancel.clear()
        bar = self.query_one("#eval-progress", ProgressBar)
        bar.update(total=None, progress=0)
        self.show(self.run_dir or self.running)
        self._worker(self.running, exam, benchmark)
        return True

    def cancel(self) -> None:
        self._cancel.set()

    @work(thread=True, exclusive=True, group="run-evaluation", exit_on_error=False)
    def _worker(self, run_dir: Path, exam: str | None, benchmark: str) -> None:
        from firefly_core.evaluation.run_eval import evaluate_run

        def progress(p) -> None:
            self.post_message(self.Progressed(run_dir, p.step, p.done, p.total))

        try:
            evaluate_run(run_dir, exam=exam, benchmark=benchmark, progress=progress, cancel=self._cancel)
        except Exception as e:  # noqa: BLE001 - shown, not raised
            self.post_message(self.Finished(run_dir, format_error(e)))
            return
        self.post_message(self.Finished(run_dir, None))

    def on_run_evaluation_progressed(self, message: Progressed) -> None:
        if message.run_dir != self.run_dir:
            return
        bar = self.query_one("#eval-progress", ProgressBar)
        bar.update(total=message.total, progress=message.done)
        self.query_one("#eval-title", Label).update(f"{t('train.eval_title')}  ·  {message.step}")

    def on_run_evaluation_finished(self, message: Finished) -> None:
        self.running = None
        self.query_one("#eval-title", Label).update(t("train.eval_title"))
        if message.error:
            self.notify(t("train.eval_failed", error=message.error), severity="error", timeout=10)
        else:
            self.notify(t("train.eval_done", path=message.run_dir.name))
        self.show(self.run_dir)
