"""The protocol package is sans-I/O: only the adapters (streams.py, shared_memory.py)
may touch the OS or an event loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import protocol

PACKAGE = Path(protocol.__file__).resolve().parent
FORBIDDEN = {"os", "asyncio", "subprocess", "socket", "threading", "anyio", "trio"}
ADAPTERS = {"streams.py", "shared_memory.py"}
PURE_MODULES = sorted(p for p in PACKAGE.glob("*.py") if p.name not in ADAPTERS)


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file, wherever it appears."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


def test_the_package_has_the_expected_modules() -> None:
    assert {p.name for p in PURE_MODULES} >= {
        "__init__.py",
        "blobs.py",
        "connection.py",
        "error_info.py",
        "errors.py",
        "framing.py",
        "messages.py",
        "states.py",
    }


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: p.name)
def test_no_io_imports(path: Path) -> None:
    bad = imported_modules(path) & FORBIDDEN
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os.path\nfrom asyncio import sleep\nfrom . import x\n"
        "def f():\n    import socket\n    return __import__('trio')\n"
    )
    assert imported_modules(sample) == {"os", "asyncio", "socket", "trio"}


def test_the_adapters_are_what_do_io() -> None:
    """The scan works on real files that do I/O."""
    assert "threading" in imported_modules(PACKAGE / "streams.py")
    assert "os" in imported_modules(PACKAGE / "shared_memory.py")
