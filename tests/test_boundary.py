"""The plug-in boundary and the import graph of the core.

The core (``radiosharp/``) reaches teachers, students and upsamplers only through the
registries, never by module path; the imports of the core and the plug-ins, lazy ones
(inside functions) included, form no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "radiosharp"
PLUGINS = ("teachers", "students", "upsamplers")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in ``path``, inside functions too."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = list(ast.walk(tree))
    found: list[tuple[int, str]] = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_core_imports_no_plugin_module():
    offending = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in sorted(CORE.rglob("*.py"))
        for line, name in imports_of(path)
        if name.split(".")[0] in PLUGINS
    ]
    assert not offending, "the core imports plug-in modules by path:\n" + "\n".join(offending)


def test_the_checker_sees_a_plugin_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from upsamplers.tiles import cut_tiles\n")
    assert [name for _, name in imports_of(sample)] == ["os", "upsamplers.tiles", "upsamplers.tiles.cut_tiles"]


def _graph(root_dirs: list[Path]) -> dict[str, set[str]]:
    files = {module_name(p): p for d in root_dirs for p in d.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets = set()
        for _, imported in imports_of(path):
            while imported and imported not in files:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_imports_have_no_cycle():
    cycle = _cycle(_graph([CORE, *(REPO / p for p in PLUGINS)]))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_internal_module_imports_the_package_top_for_its_version():
    users = [
        f"{p.relative_to(REPO)}:{line}"
        for p in CORE.rglob("*.py")
        if p.name != "__init__.py"
        for line, name in imports_of(p)
        if name == "radiosharp.__version__"
    ]
    assert not users, users
