"""The import graph of firefly_core and firefly_tui, read from the source (function-level imports
included, so a lazy import cannot hide a dependency): no import cycles, and no import from a lower
layer up to a higher one.

Layers, lowest first (a module may import its own layer and the ones below):

  0 leaves       firefly_core's top-level helpers that know nothing of models: paths, errors, atomic,
                 jsonfile, units, process, formats, records, extras, quiet, samples, outputs,
                 setting_spec, llamacpp_lib (llama.cpp's library, shared by export and generation)
  1 generation   firefly_core.generation: the decode loop, engines, kernels (given a model, never
                 finding or loading one)
  2 models       firefly_core.models: model folders, loading, saved settings and their resolution
  3 export       firefly_core.export: GGUF files (and the cache of GGUFs the llama.cpp engine runs),
                 ollama Modelfiles; reads model folders
  4 service      firefly_core.models.service: owns loaded models and prepares each once with an
                 engine (torch route, int8, CUDA graphs, or llama.cpp over a cached GGUF), so it sits
                 above both generation and export
  5 chat         conversation, session, store: one chat and its history
  6 work         training, pruning, evaluation, data, documents, preferences, quality, testkit
                 (data/documents/preferences are training data, not chat)
  7 front ends   firefly_tui (the CLI, the app, the server)

Imports under `if TYPE_CHECKING:` are left out: they never run. `UPWARD_ALLOWED` and
`CYCLES_ALLOWED` list what exists today and is being removed (issue 20); the lists only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("firefly_core", "firefly_tui")

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("leaves", ("firefly_core", "firefly_core.paths", "firefly_core.errors", "firefly_core.atomic",
                "firefly_core.jsonfile", "firefly_core.units", "firefly_core.process", "firefly_core.formats",
                "firefly_core.records", "firefly_core.extras", "firefly_core.quiet", "firefly_core.samples",
                "firefly_core.outputs", "firefly_core.setting_spec", "firefly_core.llamacpp_lib")),
    ("generation", ("firefly_core.generation",)),
    ("models", ("firefly_core.models",)),
    ("export", ("firefly_core.export",)),
    ("service", ("firefly_core.models.service",)),
    ("chat", ("firefly_core.conversation", "firefly_core.session", "firefly_core.store")),
    ("work", ("firefly_core.training", "firefly_core.pruning", "firefly_core.evaluation",
              "firefly_core.data", "firefly_core.documents", "firefly_core.preferences", "firefly_core.quality",
              "firefly_core.testkit")),
    ("front ends", ("firefly_tui",)),
]

# (importer, imported): upward imports that exist today and are being removed (issue 20). When one
# is gone, delete its line here; a new upward import fails the test.
UPWARD_ALLOWED: set[tuple[str, str]] = set()
# Modules that import each other (sorted); the same rule: delete a line when its cycle is gone.
CYCLES_ALLOWED: set[tuple[str, ...]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run (any depth, functions included; not TYPE_CHECKING)."""
    found: list = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _targets(module: str, is_package: bool, node, modules: dict[str, Path]) -> set[str]:
    """The firefly modules an import statement runs: the deepest module each name resolves to."""

    def deepest(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    out: set[str] = set()
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            prefix = f"{base}.{node.module}" if node.module else base
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{alias.name}" for alias in node.names] or [prefix]
        names = [n if n in modules else prefix for n in names]  # `from pkg import function`
    for name in names:
        if name.split(".")[0] in PACKAGES:
            target = deepest(name)
            if target and target != module:
                out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in _imports(tree):
            edges |= _targets(module, path.name == "__init__.py", node, modules)
        graph[module] = edges
    return graph


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_no_import_cycles():
    cycles = {tuple(c) for c in _cycles(import_graph())}
    unexpected = sorted(cycles - CYCLES_ALLOWED)
    assert not unexpected, "import cycles (function-level imports included):\n" + "\n".join(
        " <-> ".join(c) for c in unexpected
    )
    gone = sorted(CYCLES_ALLOWED - cycles)
    assert not gone, f"these allowed cycles are gone: delete them from CYCLES_ALLOWED: {gone}"


def test_no_import_from_a_lower_layer_up():
    graph = import_graph()
    upward = sorted(
        (a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a)
    )
    unexpected = [edge for edge in upward if edge not in UPWARD_ALLOWED]
    names = [name for name, _ in LAYERS]
    assert not unexpected, "imports up a layer:\n" + "\n".join(
        f"  {a} ({names[layer_of(a)]}) -> {b} ({names[layer_of(b)]})" for a, b in unexpected
    )
    gone = sorted(UPWARD_ALLOWED - set(upward))
    assert not gone, f"these allowed upward imports are gone: delete them from UPWARD_ALLOWED: {gone}"


def test_the_scan_sees_function_level_imports_and_skips_type_checking(tmp_path):
    """The scanner itself: a lazy import inside a function counts, a TYPE_CHECKING one does not."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from firefly_tui.app import FireflyApp\n"
        "def f():\n    from ..models import loading\n    import firefly_core.errors\n"
    )
    modules = {"firefly_core.generation.x": tmp_path, "firefly_core.models.loading": tmp_path,
               "firefly_core.models": tmp_path, "firefly_core.errors": tmp_path, "firefly_tui.app": tmp_path}
    targets = set()
    for node in _imports(ast.parse(source)):
        targets |= _targets("firefly_core.generation.x", False, node, modules)
    assert targets == {"firefly_core.models.loading", "firefly_core.errors"}


def test_the_checks_can_fail():
    """A synthetic graph: the cycle is found, and an upward edge is one."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert layer_of("firefly_core.generation.loop") < layer_of("firefly_core.models.service") < layer_of("firefly_tui.app")
