"""The package's shape, as ARCHITECTURE.md describes it: no import circles, the command line on top.

Pure: the modules are parsed, not imported. An import is *eager* when it runs at import time (at module
level, outside ``if TYPE_CHECKING:``); imports inside functions are *lazy*.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "s3stream"


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, module: str) -> set[str]:
    """The s3stream modules an import statement imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == "s3stream"}
    base = node.module or ""
    if node.level:
        package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}" if base else package
    if base.split(".")[0] != "s3stream":
        return set()
    return {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names}


def imports(module: str, *, lazy: bool) -> set[str]:
    """What ``module`` imports at import time (with ``lazy``, inside functions and type checks too)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(_targets(node, module))
            elif lazy:
                visit([n for n in ast.walk(node) if isinstance(n, ast.stmt) and n is not node])
            elif isinstance(node, ast.If) and not _is_type_checking(node):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try | ast.With | ast.ClassDef):
                visit([child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)])
    visit(tree.body)
    found.discard(module)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_no_module_imports_itself_back_at_import_time() -> None:
    """No import circle among the package's modules: following the imports that run at import time from
    any module never leads back to it."""
    graph = {module: imports(module, lazy=False) for module in MODULES}
    assert _cycles(graph) == []


def test_the_command_line_is_imported_by_nothing_below_it() -> None:
    """Only the command line itself (and ``python -m s3stream``) imports ``s3stream.cli``: the library
    never reaches up into its commands, not even lazily."""
    below = [m for m in MODULES if not m.startswith("s3stream.cli") and m != "s3stream.__main__"]
    offenders = {m: sorted(t for t in imports(m, lazy=True) if t.startswith("s3stream.cli")) for m in below}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_command_modules_do_not_import_the_assembled_command_back() -> None:
    """``s3stream.cli`` assembles the command families; none of them imports it (or the root group's
    assembly) back, so they can be read and tested one by one."""
    families = [m for m in MODULES if m.startswith("s3stream.cli.")]
    assert families
    offenders = {m: "s3stream.cli" for m in families if "s3stream.cli" in imports(m, lazy=True)}
    assert offenders == {}


def test_the_installed_package_needs_neither_the_benchmarks_nor_the_tests() -> None:
    """The runtime package imports nothing from ``benchmarks`` (the emulator and the scenarios live there)
    or ``tests``."""
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        names = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not {n for n in names if n.split(".")[0] in {"benchmarks", "tests"}}, module


@pytest.mark.parametrize("name", ["Consumer", "Producer", "Message", "build_settings", "Follower",
                                  "Settings", "handler_factory", "DeadLetterNow"])
def test_the_public_api_is_importable_from_the_package(name: str) -> None:
    """The public API stays where users import it from: ``s3stream.<name>``, listed in ``__all__``."""
    import s3stream

    assert name in s3stream.__all__
    assert getattr(s3stream, name) is not None


def test_modules_stay_readable_in_one_sitting() -> None:
    """Every module of the package is under 450 lines (the aim is about 400)."""
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}
