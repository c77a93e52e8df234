"""The package layout a newcomer reads from the tree (docs/architecture.md "Layers"): every import, at module level
or inside a function, goes down the layers or stays in its own; the packages form no circle.

The graph is read from the source with ``ast`` (nothing is imported), so a lazy import inside a function counts
as much as one at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "zss"

#: bottom to top; a unit may import units of its own layer or of layers below it. ``zss`` is the root package's
#: own code: the version and the three lazy API wrappers (``zss.create_method`` ...), which import the API layer
#: only when called, so it sits on top.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("zss._version", "zss.utils"),
    ("zss.data",),
    ("zss.ops",),
    ("zss.models",),
    ("zss.teachers",),
    ("zss.clip_es",),
    ("zss.methods",),
    ("zss.engine",),
    ("zss.registry", "zss.resources", "zss.factory", "zss.loading", "zss.predict", "zss.published"),
    ("zss.tools",),
    ("zss.cli",),
    ("zss",),
)


def _unit(module: str) -> str:
    """The layer unit of a dotted module name: its subpackage (``zss.engine.trainer`` -> ``zss.engine``), a
    root-level module itself (``zss.factory``), or ``zss`` for the root package."""
    parts = module.split(".")
    if len(parts) == 1:
        return "zss"
    sub = PKG / parts[1]
    return f"zss.{parts[1]}" if sub.is_dir() or (PKG / f"{parts[1]}.py").is_file() else "zss"


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_edges() -> list[tuple[str, str, int]]:
    """``(importing module, imported zss module, line)`` for every ``import`` of a zss module in the package."""
    edges = []
    for path in sorted(PKG.rglob("*.py")):
        mod = _module_name(path)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # ``from zss import registry`` imports the submodule zss.registry
                names = [a.name for a in node.names]
                if target == "zss":
                    edges += [
                        (mod, f"zss.{n}" if (PKG / f"{n}.py").is_file() or (PKG / n).is_dir() else "zss", node.lineno)
                        for n in names
                    ]
                    continue
                targets = [target]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges += [(mod, t, node.lineno) for t in targets if t == "zss" or t.startswith("zss.")]
    return edges


def _layer(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"{unit} is in no layer of tests/test_layout.py LAYERS: add it where it belongs")


def package_graph() -> dict[str, set[str]]:
    """Unit -> the other units it imports."""
    graph: dict[str, set[str]] = {}
    for src, dst, _ in import_edges():
        a, b = _unit(src), _unit(dst)
        graph.setdefault(a, set())
        if a != b:
            graph[a].add(b)
    return graph


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in PKG.rglob("*.py")}
    for u in units:
        _layer(u)


def test_no_import_runs_up_the_layers():
    upward = [
        f"{src}:{line} imports {dst} ({_unit(src)} is below {_unit(dst)})"
        for src, dst, line in import_edges()
        if _layer(_unit(dst)) > _layer(_unit(src))
    ]
    assert not upward, "\n".join(upward)


def test_packages_form_no_circle():
    graph = package_graph()
    state: dict[str, int] = {}

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                raise AssertionError("circle: " + " -> ".join(path[path.index(v) :] + [v]) if v in path else v)
            if not state.get(v):
                visit(v, path + [v])
        state[u] = 2

    for u in sorted(graph):
        if not state.get(u):
            visit(u, [u])


def test_no_private_name_is_imported_across_modules():
    """Helpers shared between modules are public (``zss.cli.common.without``, not ``zss.cli._without``)."""
    private = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("zss") and not node.level:
                private += [
                    f"{_module_name(path)}:{node.lineno} {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and a.name != "__version__"
                ]
    assert not private, "\n".join(private)


def test_the_checker_test_would_catch_an_upward_import(tmp_path, monkeypatch):
    """The graph reader sees a lazy import inside a function (the kind that used to run up the layers)."""
    fake = tmp_path / "zss"
    (fake / "methods").mkdir(parents=True)
    (fake / "engine").mkdir()
    (fake / "methods" / "__init__.py").write_text("")
    (fake / "engine" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "methods" / "m.py").write_text("def f():\n    from zss.engine.trainer import Trainer\n")
    monkeypatch.setattr(__import__(__name__), "PKG", fake)
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    with pytest.raises(AssertionError, match=r"zss.methods.m:2 imports zss.engine.trainer"):
        test_no_import_runs_up_the_layers()


def test_version_matches_pyproject():
    import zss

    with open(REPO / "pyproject.toml", "rb") as f:
        assert zss.__version__ == tomllib.load(f)["project"]["version"]
