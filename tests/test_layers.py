"""segzoo's modules depend on each other one way only: a module imports lower layers, never a
higher one, and never hides an import of another segzoo module inside a function, except for the
modules that pull in heavy third-party packages (torchvision via segzoo.data, onnx via export)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "segzoo"

# Lowest first. A module may import modules of its own layer or lower ones.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "_version", "_constants", "_names", "_files", "_sniff", "_warn", "hookspecs"),
    ("_registry", "_config", "_loading"),
    ("_plugins", "backbones.extractor"),
    ("_folder",),
    ("hub",),
    ("model", "backbones", "heads", "zoo"),
    ("_build",),
    ("convert",),
    ("_weights",),
    ("_factory",),
    ("metrics", "_viz", "data"),
    ("engine", "export", "_optimize", "backbones._verify"),
    ("_demo", "cli"),
    ("__init__", "__main__"),
]
# Imported inside functions on purpose: they import torchvision / onnx / the CLI at import time.
LAZY_OK = ("data", "export", "_demo", "cli")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    best = None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and (best is None or len(n) > best[1]):
                best = (i, len(n))
    if best is None:
        raise AssertionError(f"segzoo.{module} is in no layer of tests/test_layers.py: add it")
    return best[0]


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported segzoo module, inside a function?, line) for every import in the file."""
    module = _module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    tree = ast.parse(path.read_text())
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)] if child.level > 1 else package
                    target = ".".join([*base, *(child.module.split(".") if child.module else [])])
                    names = [target] if child.module else [".".join([*base, a.name]) for a in child.names]
                elif child.module and (child.module == "segzoo" or child.module.startswith("segzoo.")):
                    names = [child.module[len("segzoo.") :] if child.module != "segzoo" else "__init__"]
                else:
                    names = []
                found.extend((n or "__init__", inner, child.lineno) for n in names)
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name == "segzoo" or a.name.startswith("segzoo."):
                        found.append((a.name[len("segzoo.") :] or "__init__", inner, child.lineno))
            elif (
                isinstance(child, ast.If)
                and isinstance(child.test, ast.Name)
                and child.test.id == "TYPE_CHECKING"
            ):
                continue  # type-only imports run never
            visit(child, inner)

    visit(tree, False)
    return [(n if n else "__init__", f, ln) for n, f, ln in found]


FILES = sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[_module_name(p) for p in FILES])
def test_imports_go_one_way(path):
    me = _module_name(path)
    mine = _layer(me)
    for target, in_function, line in _imports(path):
        if target == "__init__" and me == "__init__":
            continue
        where = f"segzoo/{path.relative_to(ROOT)}:{line} imports segzoo.{target}"
        assert _layer(target) <= mine, f"{where}, a higher layer"
        if in_function:
            assert target.split(".")[0] in LAZY_OK, f"{where} inside a function; import it at the top"


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for path in FILES:
        me = _module_name(path)
        graph[me] = {t for t, in_function, _ in _imports(path) if not in_function and t != me}
    done: set[str] = set()
    stack: list[str] = []

    def walk(node: str) -> None:
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(node) :], node]))
        if node in done:
            return
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in graph:
                walk(nxt)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        walk(node)
