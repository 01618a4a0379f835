"""Which Python interpreter an app's ``kernel:`` asks for, and where it is.

``kernel:`` is written ``python-3.11``, ``python3.12`` or ``"3.10"``; empty
means the supervisor's own version, and other kernels (``node-22``) are not
Python. Interpreters are looked for where installers put them, in this order:
the supervisor's own (when the version matches), pyenv's versions
(``$PYENV_ROOT/versions``), uv's managed Pythons (``$UV_PYTHON_INSTALL_DIR``,
default ``~/.local/share/uv/python``), then ``pythonX.Y`` on ``PATH``. A
pyenv shim on ``PATH`` only answers for the versions pyenv has selected, so
every candidate is asked its version before it is used.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_KERNEL = re.compile(r"^(?:python|py|cpython)?[-_ ]?(3)\.?(\d{1,2})(?:\.\d+)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Interpreter:
    """A Python interpreter found on this host, with its version."""

    path: str
    version: str
    """The full version, e.g. ``3.11.7``."""

    @property
    def minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


def requested_version(kernel: str | None) -> str | None:
    """``3.11`` for ``python-3.11``; None when no Python version is named.

    Raises ``ValueError`` for a Python kernel whose version cannot be read.
    """
    if kernel is None or not kernel.strip():
        return None
    text = kernel.strip()
    match = _KERNEL.match(text)
    if match:
        return f"{match.group(1)}.{match.group(2)}"
    if text.lower().startswith(("python", "py")):
        raise ValueError(f"kernel {kernel!r}: expected python-3.X")
    return None


def host_interpreter() -> Interpreter:
    """The supervisor's own Python: the installation under its virtual environment,
    so that environments built from it do not depend on that environment."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Interpreter(base, ".".join(map(str, sys.version_info[:3])))


_found: dict[str, Interpreter] = {}
"""Interpreters found so far; one not found is looked for again next time."""


def find_interpreter(version: str) -> Interpreter | None:
    """The first working interpreter for ``version`` (``3.10``), or None."""
    host = host_interpreter()
    if host.minor == version:
        return host
    if version in _found:
        return _found[version]
    for candidate in _candidates(version):
        found = probe(candidate)
        if found is not None and found.minor == version:
            _found[version] = found
            return found
    return None


def probe(path: str) -> Interpreter | None:
    """Ask an executable its Python version; None if it is not a working Python."""
    try:
        done = subprocess.run(
            [path, "-I", "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    version = done.stdout.strip()
    if done.returncode != 0 or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        return None
    return Interpreter(path, version)


def _candidates(version: str) -> list[str]:
    home = Path.home()
    pyenv = Path(os.environ.get("PYENV_ROOT") or home / ".pyenv") / "versions"
    uv_managed = Path(
        os.environ.get("UV_PYTHON_INSTALL_DIR") or home / ".local" / "share" / "uv" / "python"
    )
    found: list[str | Path] = [
        *_newest_first(pyenv.glob(f"{version}.*/bin/python{version}")),
        *_newest_first(uv_managed.glob(f"cpython-{version}.*/bin/python{version}")),
    ]
    on_path = shutil.which(f"python{version}")
    if on_path:
        found.append(on_path)
    return [str(p) for p in found]


def _newest_first(paths: Iterable[Path]) -> list[Path]:
    def patch(path: Path) -> tuple[int, ...]:
        match = re.search(r"(\d+)\.(\d+)\.(\d+)", path.parent.parent.name)
        return tuple(int(n) for n in match.groups()) if match else ()

    return sorted(paths, key=patch, reverse=True)
