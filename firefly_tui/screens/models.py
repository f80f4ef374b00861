"""The models screen: the catalog, the installed models, downloads and "use this model".

Downloads run in a thread worker with a cancel `threading.Event`; progress callbacks post
messages (at most ~10 a second) to a progress bar showing bytes, speed and ETA. Cancelling
leaves the partial files in the hub cache, so downloading again resumes. Loading a model is the
app's one loading worker (`FireflyApp.load_model`); this screen's status line shows its steps
(`ModelStatus`) and its end, with the reason when it fails (`ModelLoaded`).
"""

from __future__ import annotations

from dataclasses import asdict

import threading
import time

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Header, Label, ProgressBar, Static

from firefly_core.errors import format_error
from firefly_core.units import human_bytes

from ..i18n import t
from ..model_loading import ModelLoaded, ModelStatus
from ..widgets.footer import QuickFooter as Footer

from ..widgets.localized import localize_bindings
from .dialogs import ButtonRow, ChoiceDialog, ConfirmDialog, ModelSettingsDialog, PromptDialog


def human_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ModelsScreen(Screen):
    # In the order the footer shows them: at 80 columns the first few are what fits.
    BINDINGS = [
        Binding("u", "use", "models.use"),
        Binding("l", "local", "models.local"),
        Binding("d", "download", "models.download"),
        Binding("p", "pull_id", "models.pull_id"),
        Binding("s", "model_settings", "models.settings"),
        Binding("e", "export", "models.export"),
        Binding("x", "cancel_download", "models.cancel"),
        Binding("delete", "delete", "models.delete"),
        Binding("r", "refresh", "models.refresh"),
    ]

    class Progress(Message):
        def __init__(self, progress) -> None:
            super().__init__()
            self.progress = progress

    class DownloadEnded(Message):
        def __init__(self, repo_id: str, outcome: str, detail: str = "") -> None:
            super().__init__()
            self.repo_id, self.outcome, self.detail = repo_id, outcome, detail

    class Listed(Message):
        def __init__(self, catalog: list, installed: list, error: str | None) -> None:
            super().__init__()
            self.catalog, self.installed, self.error = catalog, installed, error

    def __init__(self) -> None:
        super().__init__(id="models")
        localize_bindings(self)
        self.catalog: list = []
        self.installed: list = []
        self.download_cancel: threading.Event | None = None
        self.downloading: str | None = None
        self.loading: str | None = None
        self.status_text = ""
        self.download_text = ""

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical():
            yield Label(t("models.catalog"), classes="section")
            yield DataTable(id="catalog", cursor_type="row", zebra_stripes=True)
            yield Label(t("models.installed"), classes="section")
            yield DataTable(id="installed", cursor_type="row", zebra_stripes=True)
            with Horizontal(id="download-row"):
                yield ProgressBar(id="download-bar", show_eta=False)
                yield Label("", id="download-text")
            # "Use a local folder" second, so it stays on screen at 80 columns (the row wraps there).
            with ButtonRow(id="model-buttons", classes="buttons"):
                yield Button(t("models.use"), id="use", variant="primary", compact=True)
                yield Button(t("models.local"), id="local", compact=True)
                yield Button(t("models.download"), id="download", compact=True)
                yield Button(t("models.pull_id"), id="pull-id", compact=True)
                yield Button(t("models.settings"), id="model-settings", compact=True)
                yield Button(t("models.export"), id="export", compact=True)
                yield Button(t("models.cancel"), id="cancel-download", compact=True)
                yield Button(t("models.delete"), id="delete", variant="error", compact=True)
            yield Static(self.status_text, id="model-status", markup=False)  # errors: "[llamacpp]" is text
        yield Footer()

    def on_mount(self) -> None:
        self.app.track_screen(self)
        self.title = t("app.title")
        self.sub_title = t("nav.models")
        self._setup_tables()
        self.query_one("#download-row").display = self.downloading is not None or bool(self.download_text)
        self.query_one("#download-bar").display = self.downloading is not None
        self.query_one("#download-text", Label).update(self.download_text)
        self.query_one("#cancel-download").display = self.downloading is not None
        self.action_refresh()

    async def relabel(self) -> None:
        localize_bindings(self)
        await self.recompose()
        self.on_mount()

    def _setup_tables(self) -> None:
        cat = self.query_one("#catalog", DataTable)
        cat.clear(columns=True)
        for key in ("id", "params", "size", "langs", "format", "status", "note"):
            cat.add_column(t(f"models.col.{key}"), key=key)
        inst = self.query_one("#installed", DataTable)
        inst.clear(columns=True)
        for key in ("id", "size", "status", "source", "path"):
            inst.add_column(t(f"models.col.{key}"), key=key)

    # -- listing ------------------------------------------------------------------------------
    def action_refresh(self) -> None:
        self._list_worker()

    @work(thread=True, exclusive=True, group="list")
    def _list_worker(self) -> None:
        from firefly_core.models.catalog import catalog
        from firefly_core.models.inventory import list_installed

        errors = []
        try:
            cat = list(catalog())
        except Exception as e:  # noqa: BLE001 - the screen still shows what it can
            cat, errors = [], [format_error(e)]
        try:
            inst = list(list_installed())
        except Exception as e:  # noqa: BLE001
            inst = []
            errors.append(format_error(e))
        self.post_message(self.Listed(cat, inst, "; ".join(errors) or None))

    def on_models_screen_listed(self, message: Listed) -> None:
        self.catalog, self.installed = message.catalog, message.installed
        if message.error:
            self.set_status(t("models.unavailable", error=message.error))
        installed_ids = {m.id: m for m in self.installed}
        active = self.app.model_name
        cat = self.query_one("#catalog", DataTable)
        cat.clear()
        for e in self.catalog:
            m = installed_ids.get(e.id)
            status = (
                t("models.active") if e.id == active
                else (t("models.installed_mark") if m.complete else t("models.incomplete")) if m
                else ""
            )
            cat.add_row(
                e.id, e.params, f"{e.download_size_gb:.1f} GB", "/".join(e.languages), e.prompt_format, status, e.note,
                key=e.id,
            )
        inst = self.query_one("#installed", DataTable)
        inst.clear()
        for m in self.installed:
            status = t("models.active") if m.id == active or str(m.path) == active else (
                t("models.complete") if m.complete else t("models.incomplete")
            )
            inst.add_row(m.id, human_bytes(m.size_bytes), status, m.source, str(m.path), key=m.id)

    # -- selection ----------------------------------------------------------------------------
    def selected(self) -> tuple[str, str] | None:
        """(table id, model id) of the row under the cursor in the focused (or last) table."""
        focused = self.app.focused
        tables = [focused] if isinstance(focused, DataTable) else []
        tables += [self.query_one("#installed", DataTable), self.query_one("#catalog", DataTable)]
        for table in tables:
            if table.row_count and table.cursor_row is not None and table.cursor_row >= 0:
                key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
                return table.id, key
        return None

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "installed":
            self.use_model(event.row_key.value)

    @on(Button.Pressed)
    async def _button(self, event: Button.Pressed) -> None:
        action = {
            "use": self.action_use,
            "download": self.action_download,
            "cancel-download": self.action_cancel_download,
            "delete": self.action_delete,
            "local": self.action_local,
            "pull-id": self.action_pull_id,
            "model-settings": self.action_model_settings,
            "export": self.action_export,
        }.get(event.button.id)
        if action:
            action()

    def set_status(self, text: str) -> None:
        self.status_text = text
        self.query_one("#model-status", Static).update(text)

    # -- use ----------------------------------------------------------------------------------
    def action_use(self) -> None:
        sel = self.selected()
        if sel is None:
            self.notify(t("models.select_first"), severity="warning")
            return
        self.use_model(sel[1])

    def action_local(self) -> None:
        def done(path: str | None) -> None:
            if path:
                self.use_model(path, register=True)

        self.app.push_screen(PromptDialog(t("models.local_prompt"), placeholder="/path/to/model"), done)

    def use_model(self, name: str, register: bool = False) -> None:
        """Make `name` the active model (saved for the next start), loaded by the app's worker."""
        if self.loading:
            return
        self.loading = name
        self.query_one("#model-status").add_class("busy")
        self.app.load_model(name, persist=True, register=register)

    def on_model_status(self, message: ModelStatus) -> None:
        """Each step of getting the model ready ("compiling CPU kernels, once, ~30 s") as it happens."""
        name = f"{message.name}: {message.step}" if message.step else message.name
        self.set_status(t("models.loading", name=name))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        self.loading = None
        self.query_one("#model-status").remove_class("busy")
        if message.error:
            self.set_status(t("models.load_failed", error=message.error))
            self.query_one("#model-status").add_class("failed")
            return
        from firefly_core.models.service import weights_label

        lm = message.lm
        self.query_one("#model-status").remove_class("failed")
        self.set_status(t("models.loaded", name=message.name, device=str(lm.device), dtype=weights_label(lm),
                          ctx=lm.context_length))
        self.action_refresh()

    # -- download -----------------------------------------------------------------------------
    def action_download(self) -> None:
        sel = self.selected()
        if sel is None:
            self.notify(t("models.select_first"), severity="warning")
            return
        if self.downloading:
            return
        table, repo_id = sel
        if table != "catalog":  # an installed row: continuing a download the user already started
            self.start_download(repo_id)
            return
        from firefly_core.models.catalog import find_entry

        entry = find_entry(repo_id)
        size = f"{entry.download_size_gb:g} GB" if entry is not None else "?"

        def answered(yes: bool | None) -> None:  # a multi-GB download never starts on one key
            if yes and not self.downloading:
                self.start_download(repo_id)

        self.app.push_screen(ConfirmDialog(t("models.download_confirm", name=repo_id, size=size)), answered)

    def action_pull_id(self) -> None:
        def done(repo_id: str | None) -> None:
            if repo_id and not self.downloading:
                self.start_download(repo_id)

        self.app.push_screen(PromptDialog(t("models.pull_id"), placeholder="org/name"), done)

    def start_download(self, repo_id: str) -> None:
        self.downloading = repo_id
        self.download_cancel = threading.Event()
        row = self.query_one("#download-row")
        row.display = True
        bar = self.query_one("#download-bar", ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        self.query_one("#cancel-download").display = True
        self._set_download_text(repo_id)
        self._download_worker(repo_id, self.download_cancel)

    def action_cancel_download(self) -> None:
        if self.download_cancel is not None:
            self.download_cancel.set()

    @work(thread=True, exclusive=True, group="download")
    def _download_worker(self, repo_id: str, cancel: threading.Event) -> None:
        last = 0.0

        def progress(p) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= 0.1 or p.bytes_done >= p.bytes_total > 0:
                last = now
                self.post_message(self.Progress(p))

        from firefly_core.models.hub import pull
        from firefly_core.quiet import quiet_libraries
        from firefly_core.models.user_settings import load_settings

        try:
            quiet_libraries(ui=True)  # no progress bars drawn over the app
            # the user's remote-code opt-in for this model (`firefly use M --trust-remote-code`)
            trusted = bool(load_settings().for_model(repo_id).trust_remote_code)
            pull(repo_id, progress=progress, cancel=cancel, allow_remote_code=trusted)
        except BaseException as e:
            if cancel.is_set() or type(e).__name__ == "DownloadCancelled":
                self.post_message(self.DownloadEnded(repo_id, "cancelled"))
            else:
                self.post_message(self.DownloadEnded(repo_id, "failed", format_error(e)))
            return
        self.post_message(self.DownloadEnded(repo_id, "done"))

    def _set_download_text(self, text: str) -> None:
        self.download_text = text
        self.query_one("#download-text", Label).update(text)

    def on_models_screen_progress(self, message: Progress) -> None:
        p = message.progress
        if self.downloading != p.repo_id:
            return  # a late update from a download that has already ended
        bar = self.query_one("#download-bar", ProgressBar)
        bar.update(total=p.bytes_total or None, progress=p.bytes_done)
        self._set_download_text(
            t(
                "models.progress",
                name=p.repo_id,
                done=human_bytes(p.bytes_done),
                total=human_bytes(p.bytes_total),
                speed=human_bytes(p.speed_bps),
                eta=human_seconds(p.eta_s),
                files_done=p.files_done,
                files_total=p.files_total,
            )
        )

    def on_models_screen_download_ended(self, message: DownloadEnded) -> None:
        self.downloading = None
        self.download_cancel = None
        key = {"done": "models.downloaded", "cancelled": "models.download_cancelled"}.get(message.outcome)
        text = t(key, name=message.repo_id) if key else t("models.download_failed", error=message.detail)
        # The bar goes away whatever the outcome: an indeterminate bar after a failure would
        # keep animating as if something were still happening.
        self.query_one("#download-bar", ProgressBar).display = False
        self.query_one("#cancel-download").display = False
        self._set_download_text(text)
        self.set_status(text)
        self.query_one("#model-status").set_class(message.outcome == "failed", "failed")
        self.action_refresh()

    # -- delete -------------------------------------------------------------------------------
    def action_delete(self) -> None:
        sel = self.selected()
        m = next((m for m in self.installed if sel and m.id == sel[1]), None)
        if m is None:
            self.notify(t("models.select_first"), severity="warning")
            return

        local = m.source == "local"

        def done(yes: bool | None) -> None:
            if yes:
                self._delete_worker(str(m.path) if local else m.id, local)

        # A local folder is only forgotten (firefly never deletes the user's folders): say that,
        # not "frees 1.3 MB" followed by "freed 0 B".
        question = (
            t("models.forget_q", name=str(m.path)) if local
            else t("models.delete_q", name=m.id, size=human_bytes(m.size_bytes))
        )
        self.app.push_screen(ConfirmDialog(question), done)

    @work(thread=True, group="delete")
    def _delete_worker(self, model: str, local: bool) -> None:
        from firefly_core.models.inventory import remove

        try:
            freed = remove(model)
        except BaseException as e:
            self.app.call_from_thread(self.set_status, format_error(e))
            return
        text = t("models.forgotten", name=model) if local else t("models.deleted", name=model, size=human_bytes(freed))
        self.app.call_from_thread(self.set_status, text)
        self.app.call_from_thread(self.action_refresh)

    # -- how a model runs (engine, int8, CUDA graphs, threads) --------------------------------
    def _selected_model(self) -> str | None:
        """The selected model as the model service names it: a hub id, or a local folder's path."""
        sel = self.selected()
        if sel is None:
            self.notify(t("models.select_first"), severity="warning")
            return None
        m = next((m for m in self.installed if m.id == sel[1]), None)
        return str(m.path) if m is not None and m.source == "local" else sel[1]

    def action_model_settings(self) -> None:
        model = self._selected_model()
        if model is None:
            return
        from firefly_core.models.user_settings import load_settings, update_model_settings

        try:
            current = asdict(load_settings().for_model(model))
        except Exception as e:  # noqa: BLE001 - a broken settings file: say so, change nothing
            self.set_status(format_error(e))
            return

        def done(values: dict | None) -> None:
            if values is None:
                return
            try:
                saved = update_model_settings(model, **values)  # the dialog's fields: None = automatic
            except Exception as e:  # noqa: BLE001
                self.set_status(format_error(e))
                return
            if self.app.settings is not None:
                self.app.settings.models[model] = saved
            self.set_status(t("models.settings_saved", name=model))

        self.app.push_screen(ModelSettingsDialog(model, current), done)

    # -- GGUF export (llama.cpp, ollama) --------------------------------------------------------
    GGUF_TYPES = ("bf16", "f16", "q8_0", "q4_k_m")

    def action_export(self) -> None:
        model = self._selected_model()
        if model is None:
            return
        from firefly_core.extras import missing_extra

        missing = missing_extra("llamacpp")
        if missing is not None:  # say so before asking for a type and a file
            self.query_one("#model-status").set_class(True, "failed")
            self.set_status(t("models.export_failed", error=format_error(missing)))
            return

        def typed(gguf_type: str | None) -> None:
            if not gguf_type:
                return

            def placed(path: str | None) -> None:
                if path:
                    self.set_status(t("models.exporting", name=model, step="…"))
                    self.query_one("#model-status").add_class("busy")
                    self._export_worker(model, path, gguf_type)

            from firefly_core.export.gguf import default_export_path

            default = str(default_export_path(model, gguf_type))
            self.app.push_screen(PromptDialog(t("models.export_path"), value=default), placed)

        self.app.push_screen(
            ChoiceDialog(t("models.export_type", name=model), [(x, x) for x in self.GGUF_TYPES], note=t("models.export_note")),
            typed,
        )

    @work(thread=True, exclusive=True, group="export")
    def _export_worker(self, model: str, path: str, gguf_type: str) -> None:
        def status(step: str) -> None:
            self.app.call_from_thread(self.set_status, t("models.exporting", name=model, step=step))

        try:
            from firefly_core.export.gguf import check_export_target, export_gguf, model_info

            target = check_export_target(path, replace=False, replace_hint=t("models.export_exists_hint"))
            out = export_gguf(model_info(model), target, gguf_type=gguf_type, status=status)
        except BaseException as e:  # noqa: BLE001 - shown, with the hint
            self.app.call_from_thread(self._export_ended, t("models.export_failed", error=format_error(e)), True)
            return
        size = human_bytes(out.stat().st_size)
        self.app.call_from_thread(self._export_ended, t("models.exported", path=str(out), size=size), False)

    def _export_ended(self, text: str, failed: bool) -> None:
        status = self.query_one("#model-status")
        status.remove_class("busy")
        status.set_class(failed, "failed")
        self.set_status(text)
