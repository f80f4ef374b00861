"""The pipx path, for real: the wheel built from this tree, installed NON-editable into a fresh
venv with a fresh HOME, runs the README's first steps: --version, the shipped sample data, a
3-step CPU training of a tiny model, and a chat with the result (engine torch).

To avoid downloading torch again, the fresh venv sees this venv's site-packages for dependencies
only: a .pth file that appends it to sys.path AFTER the venv's own site-packages, so firefly
itself is imported from the wheel's install (asserted), never from this checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(argv, *, env, cwd, stdin: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, encoding="utf-8", env=env,
                          cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{argv}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin folder, environment) of a fresh venv holding the wheel, and a fresh HOME."""
    work = tmp_path_factory.mktemp("wheel")
    # Build from a copy: an in-tree build would write build/ into the checkout.
    src = work / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("firefly_core", "firefly_tui"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = work / "dist"
    pip_env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist),
          str(src)], env=pip_env, cwd=work)
    wheel = next(dist.glob("firefly_tui-*.whl"))

    venv = work / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], env=pip_env, cwd=work)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)],
         env=pip_env, cwd=work)
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     env=pip_env, cwd=work).stdout.strip())
    outer = sysconfig.get_paths()["purelib"]
    # "zz": .pth files are read in name order; a bare path line is appended to sys.path, after this
    # venv's site-packages (the outer folder's own .pth files, e.g. the editable install's, are not run).
    (site / "zz-outer-dependencies.pth").write_text(outer + "\n", encoding="utf-8")

    home = work / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FIREFLY_", "HF_", "XDG_", "TORCH_EXTENSIONS", "VIRTUAL_ENV", "PYTHON"))}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
               PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1")
    return venv / "bin", env, site, wheel


def test_the_wheel_installed_by_itself_runs_the_first_steps(installed, bloom_dir, tmp_path):
    bin_dir, env, site, _wheel = installed
    firefly = str(bin_dir / "firefly")

    where = _run([str(bin_dir / "python"), "-c", "import firefly_core, firefly_tui; print(firefly_core.__file__); "
                  "print(firefly_tui.__file__)"], env=env, cwd=tmp_path).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where  # the wheel's copy, not this checkout

    from firefly_core import __version__

    assert _run([firefly, "--version"], env=env, cwd=tmp_path).stdout.strip() == f"firefly-tui {__version__}"

    listed = dict(line.split(None, 1) for line in _run([firefly, "data", "sample"], env=env, cwd=tmp_path).stdout.splitlines())
    sample = Path(listed["instructions"])
    assert sample.is_file() and sample.is_relative_to(site)  # shipped inside the package
    check = _run([firefly, "data", "check", str(sample)], env=env, cwd=tmp_path).stdout
    assert "lines: 300" in check and "bad: 0" in check

    run = tmp_path / "run"
    _run([firefly, "train", "--gpu", "cpu", "--model", str(bloom_dir), "--data", str(sample), "--out", str(run),
          "--max-steps", "3", "--batch-size", "2", "--max-length", "64"], env=env, cwd=tmp_path)
    final = run / "final"
    assert (final / "config.json").is_file()

    reply = _run([firefly, "chat", "--model", str(final), "--engine", "torch", "--device", "cpu", "--greedy",
                  "--max-new-tokens", "6"], env=env, cwd=tmp_path, stdin="你好\n")
    assert reply.stdout.strip() and "Traceback" not in reply.stderr
    assert not (ROOT / "build").exists()  # the build ran on a copy, not in this checkout


def test_the_wheel_carries_the_samples_and_names_its_extras(installed):
    """`pipx install 'firefly-tui[llamacpp]'` needs the extra declared in the wheel's metadata."""
    import zipfile

    wheel = installed[3]
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode("utf-8")
    from firefly_core.samples import SAMPLE_FILES

    assert {f"firefly_core/assets/{name}" for name in SAMPLE_FILES.values()} <= names
    assert "Provides-Extra: llamacpp" in metadata and "Provides-Extra: deepspeed" in metadata
    assert not any(n.startswith("tests/") for n in names)
