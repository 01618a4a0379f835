"""What an app's environment is: its requirements, its interpreter, the runtime's needs.

Pure decisions, no I/O beyond reading the app's requirements file. Two apps
whose requirements file says the same thing, for the same interpreter and the
same runtime requirements, share one environment: its directory name is a hash
of those (``key``). Changing any of them gives another key, hence a fresh build;
the old one stays until ``env prune``.

The runtime itself (``child/`` and ``protocol/``) is not installed: it is put
on the child's path from the supervisor's own files (see ``env_cache``), and
only what it imports (``RUNTIME_REQUIREMENTS``) is resolved together with the
app's requirements, so the app's pins win whenever they satisfy them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .interpreters import Interpreter

REQUIREMENT_FILES = ("requirements.lock", "requirements.txt")
"""Looked for in this order: a lock, with exact pins, wins over the loose list."""
RUNTIME_REQUIREMENTS = ("pydantic>=2.6", "msgpack>=1.0.7", "anyio>=4.7", "PyYAML>=6.0")
"""What ``child/`` and ``protocol/`` import (PyYAML reads ``inf.yml``); the versions
apps lock (pydantic 2.10-2.13, anyio 4.10-4.14, msgpack 1.1-1.2) all satisfy them."""
LAYOUT = "1"
"""Bumped when the way environments are built changes, so that old ones are rebuilt."""

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_ERROR_START = re.compile(r"^\s*(ERROR|error|\u00d7|\u2570\u2500\u25b6|Because)", re.MULTILINE)


@dataclass(frozen=True)
class EnvSpec:
    """What an app's environment is built from; its key names the cache entry."""

    requirements: Path
    content: str
    python: Interpreter

    @property
    def key(self) -> str:
        digest = hashlib.sha256(
            json.dumps(
                {
                    "layout": LAYOUT,
                    "requirements": normalized(self.content),
                    "python": [self.python.path, self.python.version],
                    "runtime": RUNTIME_REQUIREMENTS,
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()
        return f"py{self.python.minor}-{digest[:16]}"


def requirements_file(app_dir: Path) -> Path | None:
    for name in REQUIREMENT_FILES:
        path = app_dir / name
        if path.is_file():
            return path
    return None


def env_spec(app_dir: Path, python: Interpreter) -> EnvSpec | None:
    """The app's environment, or None when it has no requirements (the fast path)."""
    path = requirements_file(app_dir)
    if path is None:
        return None
    return EnvSpec(path, path.read_text(), python)


def normalized(text: str) -> str:
    """Requirements without blank lines, comments or trailing spaces: the same
    pins written differently are the same environment."""
    lines = (line.split(" #")[0].rstrip() for line in text.splitlines())
    return "\n".join(line for line in lines if line and not line.lstrip().startswith("#"))


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(text: str) -> list[str]:
    """The requirement lines of a requirements file (no options, no comments)."""
    return [
        line.strip()
        for line in normalized(text).splitlines()
        if not line.lstrip().startswith("-") and _NAME.match(line)
    ]


def failing_requirement(output: str, requirements: str) -> str | None:
    """The requirement an installer's failure is about: the first one, of the
    app's and the runtime's, named in the error part of its output."""
    start = _ERROR_START.search(output)
    error = canonical_name(output[start.start() :] if start else output)
    best: tuple[int, str] | None = None
    for line in [*requirement_lines(requirements), *RUNTIME_REQUIREMENTS]:
        match = _NAME.match(line)
        assert match is not None
        name = re.escape(canonical_name(match.group(1)))
        found = re.search(rf"(?<![a-z0-9-]){name}(?![a-z0-9])", error)
        if found and (best is None or found.start() < best[0]):
            best = (found.start(), line)
    return best[1] if best else None
