"""The layering of the code base, enforced: which part may import which.

Read from the source with ``ast`` (nothing is imported), so an import behind
``TYPE_CHECKING`` or inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "child", "supervisor")

FACES = ("supervisor.http", "supervisor.cli", "supervisor.ray", "supervisor.start_display")
"""How users reach the runtime: the HTTP server, the command line, Ray Serve."""
VOCABULARY = (
    "supervisor.errors",
    "supervisor.events",
    "supervisor.log_setup",
    "supervisor.app_traceback",
)
"""Shared by every part of the supervisor; imports none of them."""

RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("protocol", ("child", "supervisor"), "the wire format is shared by both sides"),
    ("child", ("supervisor",), "the child runs in the app's interpreter, alone"),
    ("supervisor", ("child",), "the child may run another Python: never imported"),
    (
        "supervisor.process",
        ("supervisor.core", "supervisor.gpu", *FACES),
        "process mechanics know nothing of replicas or GPU policy",
    ),
    (
        "supervisor.environments",
        ("supervisor.core", "supervisor.gpu", "supervisor.process", *FACES),
        "an app's environment is resolved before anything runs in it",
    ),
    ("supervisor.gpu", ("supervisor.core", *FACES), "the core uses the GPU part, not the reverse"),
    ("supervisor.core", FACES, "the core serves every face and imports none"),
    *(
        (
            module,
            (
                "supervisor.core",
                "supervisor.process",
                "supervisor.gpu",
                "supervisor.environments",
                *FACES,
            ),
            "shared vocabulary imports no part",
        )
        for module in VOCABULARY
    ),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "node_modules" not in path.parts:
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules a module imports (the most specific one named)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [
                f"{target}.{alias.name}" if f"{target}.{alias.name}" in MODULES else target
                for alias in node.names
            ]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in MODULES:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for importer, imported in sorted(graph.items()):
        for scope, forbidden, why in RULES:
            if not _within(importer, scope):
                continue
            for target in sorted(imported):
                if any(_within(target, bad) for bad in forbidden):
                    found.append(f"{importer} imports {target}: {why}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
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
            visit(node)
    return found


def test_the_layers_import_only_downwards() -> None:
    assert violations(GRAPH) == []


def test_no_import_cycles_even_behind_type_checking() -> None:
    # the package's own __init__ re-exports the public API and is left out
    graph = {k: {t for t in v if t != "supervisor"} for k, v in GRAPH.items() if k != "supervisor"}
    assert cycles(graph) == []


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("supervisor.process.pool", "supervisor.core.app"),
        ("supervisor.gpu.monitor", "supervisor.core.replica"),
        ("supervisor.core.app", "supervisor.http.server"),
        ("supervisor.errors", "supervisor.core.request"),
        ("protocol.framing", "supervisor.errors"),
        ("child.runtime", "supervisor.errors"),
        ("supervisor.core.app", "child.runtime"),
    ],
)
def test_the_rules_catch_an_upward_import(importer: str, imported: str) -> None:
    assert violations({importer: {imported}}) != []


def test_the_cycle_check_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_part_is_seen() -> None:
    """A rule about a folder that is not there, or a parser that sees no imports, proves nothing."""
    for scope, _, _ in RULES:
        assert any(_within(module, scope) for module in MODULES), scope
    assert GRAPH["supervisor.core.app"], "no imports found in the core's App"
