"""The models on this machine: the Hugging Face cache, the user's registered local folders, and
resolving a name (hub id or folder) to a model folder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .. import atomic, paths
from ..errors import ConfigError, FireflyError, ModelNotFoundError
from ..jsonfile import read_json
from .folder import FolderStatus, check_model_folder, folder_status
from .names import COMMIT_RE


@dataclass
class InstalledModel:
    """A model on this machine: a hub-cache snapshot or a registered local folder."""

    id: str
    path: Path
    size_bytes: int
    complete: bool
    source: str  # "hub-cache" | "local"
    missing: list[str] = field(default_factory=list)  # why it is incomplete, for `show`



def cache_folder(repo_id: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return paths.hf_cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model")


def valid_repo_id(repo_id: str) -> bool:
    """huggingface_hub's own repo-id rule (characters, length), as a yes/no."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True


def looks_like_hub_id(name: str) -> bool:
    parts = str(name).split("/")
    return len(parts) == 2 and all(parts) and not str(name).startswith((".", "/", "~"))


def pending_blobs(storage: Path) -> list[Path]:
    """Partial blobs (ours `<etag>.incomplete`, the library's `<etag>.<id>.incomplete`) not yet finished."""
    blobs = storage / "blobs"
    if not blobs.is_dir():
        return []
    return [p for p in blobs.glob("*.incomplete") if not (blobs / p.name.split(".")[0]).exists()]


def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            try:
                if not p.is_symlink():
                    total += p.stat().st_size
            except OSError:
                pass
    return total


def read_ref(storage: Path, name: str = "main") -> tuple[str | None, str | None]:
    """(commit, problem) of `refs/<name>` in a repo's cache folder.

    The file is untrusted (another tool, a crash, a hostile mirror may have written it): only a
    40-hex commit id is used; anything else is reported as the problem, never joined to a path.
    """
    ref = storage / "refs" / name
    if not os.path.lexists(ref):
        return None, None
    if ref.is_symlink() or not ref.is_file():
        return None, f"refs/{name} is not a plain file"
    try:
        raw = ref.read_bytes()[:200]
    except OSError as e:
        return None, f"refs/{name} cannot be read ({e.strerror or e})"
    text = raw.decode("ascii", "replace").strip()
    if not COMMIT_RE.fullmatch(text):
        return None, f"refs/{name} holds {text[:40]!r}, not a commit id (damaged cache)"
    return text, None


def _current_snapshot(storage: Path) -> tuple[Path | None, str | None]:
    """(snapshot folder, problem): the one refs/main names, else the newest snapshot.

    A refs/main that holds garbage is a problem (the model is listed damaged), never a path.
    Only snapshot folders named by a commit id and lying inside `storage` count.
    """
    snaps = storage / "snapshots"
    commit, problem = read_ref(storage)
    if problem:
        return None, problem
    if commit is not None:
        snap = snaps / commit
        if snap.is_dir() and _within(storage, snap):
            return snap, None
    candidates = [
        p for p in snaps.iterdir() if COMMIT_RE.fullmatch(p.name) and p.is_dir() and _within(storage, p)
    ] if snaps.is_dir() else []
    return (max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None), None


def _within(storage: Path, path: Path) -> bool:
    root = storage.resolve()
    target = path.resolve()
    return target == root or root in target.parents


def _repo_id_from_folder(name: str) -> str | None:
    parts = name.split("--")
    return "/".join(parts[1:]) if parts[0] == "models" and len(parts) >= 2 else None


def _cache_entry(repo_id: str, storage: Path) -> InstalledModel:
    snap, problem = _current_snapshot(storage)
    if problem:
        missing = [problem]
    else:
        status = folder_status(snap) if snap else FolderStatus(False, ["snapshot"])
        missing = list(status.missing)
    if pending_blobs(storage):
        missing.append("unfinished download")
    return InstalledModel(repo_id, snap or storage, _tree_bytes(storage), not missing, "hub-cache", missing)


def find_cache_folder(repo_id: str) -> Path | None:
    """The cache folder of hub id `repo_id` if there is one, in any case (the hub is case-insensitive)."""
    if not (looks_like_hub_id(repo_id) and valid_repo_id(repo_id)):
        return None
    storage = cache_folder(repo_id)
    if not storage.is_dir() and storage.parent.is_dir():
        wanted = storage.name.lower()
        storage = next((p for p in storage.parent.iterdir() if p.name.lower() == wanted and p.is_dir()), storage)
    return storage if storage.is_dir() else None


def _registry_file() -> Path:
    return paths.data_dir() / "local_models.json"


def registered_local() -> list[Path]:
    """The local model folders the user added (they may have been moved since).

    The file is checked, not trusted: anything but {"folders": [path, ...]} is a clear error
    (before, {"folders": "abc"} listed models "a", "b" and "c")."""
    file = _registry_file()
    hint = ('fix it by hand (it holds {"folders": ["/path/to/model", ...]}), or delete it to forget '
            "the local folders (the folders themselves are not touched)")
    try:
        data = read_json(file, what="the list of local models", error=ConfigError, hint=hint,
                         max_bytes=16 * 1024 * 1024, if_empty={})
    except FileNotFoundError:
        return []
    if not isinstance(data, dict):
        raise ConfigError(f"the list of local models {file} is damaged: it holds a JSON {type(data).__name__}, "
                          "not an object", hint)
    folders = data.get("folders", [])
    if not isinstance(folders, list) or not all(isinstance(p, str) and p.strip() for p in folders):
        raise ConfigError(f"the list of local models {file} is damaged: \"folders\" is not a list of folder paths",
                          hint)
    return [Path(p) for p in folders]


def _save_registry(folders: list[Path]) -> None:
    """Write the list atomically (StorageError with a hint when its folder is not writable)."""
    atomic.write_json(_registry_file(), {"folders": [str(p) for p in dict.fromkeys(folders)]})


def register_local(path: str | os.PathLike) -> None:
    """Add a local model folder to `firefly list` (checked first: config, tokenizer, weights)."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ModelNotFoundError(f"no folder at {folder}")
    check_model_folder(folder)
    folders = registered_local()
    if folder not in folders:
        _save_registry(folders + [folder])


def unregister_local(path: str | os.PathLike) -> bool:
    folder = Path(path).expanduser().resolve()
    folders = registered_local()
    if folder not in folders:
        return False
    _save_registry([p for p in folders if p != folder])
    return True


def list_installed() -> list[InstalledModel]:
    """Every model on this machine: the HF cache (with size and completeness), then local folders.

    The cache is read by its layout (`models--org--name`), not with `scan_cache_dir`, which leaves
    a damaged repo out of its list; here a damaged one is listed incomplete with the reason.
    """
    out: dict[str, InstalledModel] = {}
    cache = paths.hf_cache_dir()
    if cache.is_dir():
        for folder in sorted(cache.glob("models--*")):
            repo_id = _repo_id_from_folder(folder.name)
            if repo_id and repo_id not in out and folder.is_dir():
                out[repo_id] = _cache_entry(repo_id, folder)
    models = sorted(out.values(), key=lambda m: m.id.lower())
    for folder in registered_local():
        if folder.is_dir():
            status = folder_status(folder)
            models.append(InstalledModel(str(folder), folder, _tree_bytes(folder), status.complete, "local", status.missing))
        else:
            models.append(InstalledModel(str(folder), folder, 0, False, "local", ["folder is gone"]))
    return models


def find_installed(name: str) -> InstalledModel | None:
    """The installed model called `name` (hub id, case-insensitive, or a registered folder).

    Looks only where that one model can be: its own cache folder (the hub is case-insensitive, so
    folder names are compared case-insensitively) or the registry; it never scans the whole cache.
    """
    key = str(name).strip()
    as_path = Path(key).expanduser()
    storage = find_cache_folder(key)
    if storage is not None:
        return _cache_entry(_repo_id_from_folder(storage.name) or key, storage)
    if as_path.exists():
        resolved = as_path.resolve()
        for folder in registered_local():
            if folder == resolved:
                status = folder_status(folder)
                return InstalledModel(str(folder), folder, _tree_bytes(folder), status.complete, "local", status.missing)
    else:
        for folder in registered_local():
            if str(folder).lower() == key.lower():
                return InstalledModel(str(folder), folder, 0, False, "local", ["folder is gone"])
        folder = registered_by_name(key)
        if folder is not None:
            status = folder_status(folder)
            return InstalledModel(str(folder), folder, _tree_bytes(folder), status.complete, "local", status.missing)
    return None


def local_name(folder: Path) -> str:
    """The one short name of a registered folder, as the app, `firefly serve`'s ids and every
    command say it: its last part (`run/final` for a training run's model)."""
    if folder.name == "final" or folder.name.startswith(("step-", "checkpoint")):
        return f"{folder.parent.name}/{folder.name}"
    return folder.name


def registered_by_name(name: str) -> Path | None:
    """The registered folder whose short name (`local_name`) is `name` (case-insensitive), when
    exactly one has it: two folders of the same name need their paths."""
    key = str(name).strip().lower()
    hits = [f for f in registered_local() if local_name(f).lower() == key and f.is_dir()]
    return hits[0] if len(hits) == 1 else None


def local_summary() -> str:
    """One line saying what can be used without the network."""
    try:
        models = list_installed()
    except FireflyError:
        models = []
    if not models:
        return "nothing is downloaded yet"
    names = [m.id + ("" if m.complete else " (incomplete)") for m in models]
    return "available here: " + ", ".join(names)


def remove(repo_id_or_path: str | os.PathLike) -> int:
    """Delete a downloaded model from the cache (blobs, partial files, snapshots); returns bytes freed.

    A registered local folder is only forgotten (0 bytes): firefly never deletes the user's folders.
    """
    name = str(repo_id_or_path).strip()
    path = Path(name).expanduser()
    if path.exists() and unregister_local(path):
        return 0
    if path.exists() and not looks_like_hub_id(name):
        raise ModelNotFoundError(f"{path.resolve()} is not a registered local model", "see: firefly list")
    if not looks_like_hub_id(name):
        if unregister_local(path):  # a registered folder that has been deleted since
            return 0
        raise ModelNotFoundError(f"{name!r} is neither a hub id (org/name) nor a registered folder", "see: firefly list")
    storage = find_cache_folder(name)
    if storage is None:
        raise ModelNotFoundError(f"{name} is not downloaded", local_summary())
    if storage.is_symlink():
        raise FireflyError(
            f"the cache folder of {name} is a symbolic link ({storage} -> {os.readlink(storage)}); "
            "firefly deletes only what lies in the cache, so it removed nothing",
            f"delete the link ({storage}) and, if you no longer need them, the files it points to yourself",
        )
    freed = _tree_bytes(storage)
    shutil.rmtree(storage)
    shutil.rmtree(paths.hf_cache_dir() / ".locks" / storage.name, ignore_errors=True)
    return freed


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A local folder for `name_or_path`: the folder itself, or the cached snapshot of a hub id."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    registered = registered_by_name(name) if not find_cache_folder(name) else None
    if registered is not None:  # a local folder's short name (the app's and the API's)
        return registered
    if looks_like_hub_id(name):
        # Our own scan of the cache knows which files a model needs; the
        # library's local_files_only lookup would call a snapshot that skipped duplicate .bin
        # weights "incomplete".
        found = find_installed(name)
        if found is not None and found.complete:
            return found.path
        if found is not None and any("damaged" in m or m.startswith("refs/") for m in found.missing):
            raise ModelNotFoundError(
                f"the cache of {name!r} is damaged: {'; '.join(found.missing)}",
                f"repair it with: firefly pull {name} (or delete it: firefly rm {name})",
            )
        if found is not None:
            raise ModelNotFoundError(
                f"the download of {name!r} is incomplete ({', '.join(found.missing) or 'files missing'})",
                f"resume it with: firefly pull {name}",
            )
        raise ModelNotFoundError(
            f"model {name!r} is not downloaded",
            f"download it with: firefly pull {name}"
            + (" (you are offline: HF_HUB_OFFLINE is set)" if _offline() else ""),
        )
    raise ModelNotFoundError(
        f"no model folder at {path}",
        "give a folder with config.json and a tokenizer, or a hub id like YeungNLP/firefly-1b4 "
        "(see: firefly list)",
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
