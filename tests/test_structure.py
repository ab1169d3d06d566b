"""The shape of the code, read from its imports: one-way dependencies and no private reaches.

Walks every module of ``edm``, ``samplers`` and ``tools`` with ``ast`` (imports inside functions count
too) and asserts that

* no module in ``tools`` imports a name beginning with ``_`` from another module (nor reaches one as
  ``module._name``);
* no library module (one that does not use click) under ``tools`` imports a CLI module (one that does);
* there is no import cycle among the project's modules;
* ``tools`` is built in floors (:data:`FLOORS`): a module imports only from its own floor or the floors
  below, so no arrow runs back up and no circle forms between ``tools`` subpackages;
* ``samplers`` imports neither ``edm`` nor ``tools``, and ``edm`` does not import ``tools``;
* ``import tools.cli`` does not import torch, and ``edm --help`` works.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edm", "samplers", "tools")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _lazy_exports(name: str) -> dict[str, str]:
    """A package's ``_EXPORTS`` literal (name -> relative submodule), when it exports lazily."""
    tree = ast.parse(MODULES[name].read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _resolve(module: str, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".")
    if not _is_package(module):
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _owner(dotted: str) -> str | None:
    """The project module that ``dotted`` (a module or a name in one) lives in."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


class Imports:
    """Per module: the project modules it imports, the private names it imports, whether it uses click."""

    def __init__(self):
        self.edges: dict[str, set[str]] = {name: set() for name in MODULES}
        self.private: list[str] = []
        self.uses_click: set[str] = set()
        for name, path in MODULES.items():
            self._read(name, ast.parse(path.read_text(), str(path)))

    def _edge(self, module: str, target: str | None) -> None:
        if target and target != module:
            self.edges[module].add(target)

    def _read(self, module: str, tree: ast.AST) -> None:
        aliases: dict[str, str] = {}  # local name -> project module
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "click":
                        self.uses_click.add(module)
                    owner = _owner(alias.name)
                    self._edge(module, owner)
                    if owner and alias.asname:
                        aliases[alias.asname] = owner
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, node.level, node.module)
                if source.split(".")[0] == "click":
                    self.uses_click.add(module)
                if _owner(source) is None:
                    continue
                for alias in node.names:
                    full = f"{source}.{alias.name}"
                    if full in MODULES:  # a submodule
                        self._edge(module, full)
                        aliases[alias.asname or alias.name] = full
                        continue
                    lazy = _lazy_exports(source) if source in MODULES and _is_package(source) else {}
                    target = _owner(source)
                    if alias.name in lazy:  # a relative submodule name, or an absolute module
                        where = lazy[alias.name]
                        target = f"{source}{where}" if where.startswith(".") else _owner(where)
                    self._edge(module, target)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and target != module:
                        self.private.append(f"{module} imports {alias.name} from {target}")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                owner = aliases.get(node.value.id)
                if owner and node.attr.startswith("_") and not node.attr.startswith("__"):
                    self.private.append(f"{module} uses {owner}.{node.attr}")


@pytest.fixture(scope="module")
def imports() -> Imports:
    return Imports()


def test_the_walk_sees_the_known_edges(imports):
    # guards the walker itself: a few imports that must be found
    assert "tools.generate.sampling" in imports.edges["tools.generate.plan"]
    assert "tools.fid.scoring" in imports.edges["tools.compare.inputs"]  # through the lazy package export
    assert "tools.generate.cli" in imports.edges["tools.cli"]
    assert "tools.options" in imports.uses_click and "tools.generate.sampling" not in imports.uses_click


def test_no_private_names_cross_modules_in_tools(imports):
    found = [line for line in imports.private if line.startswith("tools")]
    assert found == []


def test_library_modules_never_import_cli_modules(imports):
    cli = imports.uses_click
    library = [name for name in MODULES if name.startswith("tools.") and name not in cli]
    assert {"tools.fid.scoring", "tools.compare.runner", "tools.generate.runner",
            "tools.models.loader"} <= set(library)
    bad = [f"{name} -> {target}" for name in library for target in imports.edges[name] if target in cli]
    assert bad == []


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles(imports):
    assert _cycles(imports.edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


#: the floors of ``tools``, lowest first: each module or subpackage imports only from its own floor or below
FLOORS = (
    ("tools.common", "tools.seeds", "tools.images", "tools.ranks", "tools.device", "tools.ode",
     "tools.labels", "tools.request"),
    ("tools.models",),
    ("tools.schedules",),
    ("tools.solvers",),
    ("tools.steering",),
    ("tools.options",),
    ("tools.generate",),
    ("tools.fid",),
    ("tools.compare",),
    ("tools.cli", "tools.distill_cli", "tools.train_cli", "tools.train_classifier_cli", "tools.tune_cli"),
)


def _floor(module: str) -> int | None:
    for level, rooms in enumerate(FLOORS):
        if any(module == room or module.startswith(room + ".") for room in rooms):
            return level
    return None


def test_every_tools_module_has_a_floor():
    assert [name for name in MODULES if name.startswith("tools.") and _floor(name) is None] == []


def test_no_import_runs_up_a_floor(imports):
    """At any depth (imports inside functions count): a lower floor never imports a higher one."""
    bad = [f"{m} -> {t}" for m, targets in imports.edges.items() if m.startswith("tools.")
           for t in targets if t.startswith("tools.") and _floor(t) > _floor(m)]
    assert bad == []


def test_the_floor_check_sees_an_import_inside_a_function(imports):
    # tools.generate.plan imports tools.request at module level; tools.options imports it inside a function
    assert "tools.request" in imports.edges["tools.options"]
    assert _floor("tools.options") > _floor("tools.request")


def test_dependencies_point_one_way(imports):
    bad = [f"{m} -> {t}" for m, targets in imports.edges.items() for t in targets
           if (m.startswith("samplers") and t.split(".")[0] in ("edm", "tools"))
           or (m.startswith("edm") and t.startswith("tools"))]
    assert bad == []


@pytest.mark.slow
def test_cli_starts_without_torch():
    code = "import sys, tools.cli; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    out = subprocess.run([sys.executable, "-m", "tools.cli", "--help"], check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout
    for name in ("generate", "fid", "bench", "tune-schedule", "info", "train", "samplers", "schedules"):
        assert name in out
