"""The modules apps of an environment imported, remembered for its fork server.

A child reports, when its app is set up, the library modules that loading and
setting up the app imported (``child.import_record``). The pool keeps them per
pool key (interpreter, configured preloads, library settings) and the key's
next fork server imports them as optional preloads, so that the next start of
an app of that environment pays none of them. With a file (the default: beside
the environment cache) they outlive the supervisor: "the modules an app of this
environment imported last time".

Names are checked (dotted identifiers) and bounded: the file is only a cache,
and a zygote imports nothing that is not installed in its own interpreter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger("supervisor.pool")

LEARNED_PRELOADS_FILE = "learned-preloads.json"
"""Its name in the environment cache (the supervisor's default place for it)."""
MAX_PER_KEY = 4000
"""A bound on what is kept for one key (torch alone is about 1,500 modules)."""
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def valid_names(names: Iterable[Any]) -> list[str]:
    """The dotted module names among ``names``, in order, without repeats."""
    seen: dict[str, None] = {}
    for name in names:
        if isinstance(name, str) and len(name) < 256 and _NAME.fullmatch(name):
            seen.setdefault(name, None)
    return list(seen)


class LearnedPreloads:
    """Module names per key (any string), in memory and, with ``path``, in a JSON file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._by_key: dict[str, list[str]] = self._read()

    def get(self, key: str) -> tuple[str, ...]:
        return tuple(self._by_key.get(key, ()))

    def learn(self, key: str, modules: Iterable[Any]) -> bool:
        """Add what an app imported; True when that is more than was known."""
        known = self._by_key.get(key, [])
        have = set(known)
        new = [name for name in valid_names(modules) if name not in have]
        room = MAX_PER_KEY - len(known)
        if not new or room <= 0:
            return False
        self._by_key[key] = known + new[:room]
        self._write()
        return True

    def forget(self, key: str) -> None:
        """Drop a key's modules (its fork server could not use them)."""
        if self._by_key.pop(key, None) is not None:
            self._write()

    def _read(self) -> dict[str, list[str]]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring the learned preloads in %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {
            key: valid_names(names)[:MAX_PER_KEY]
            for key, names in data.items()
            if isinstance(key, str) and isinstance(names, list)
        }

    def _write(self) -> None:
        """Replace the file at once (another supervisor may read it meanwhile)."""
        if self.path is None:
            return
        temporary: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".learned-")
            with os.fdopen(fd, "w") as out:
                json.dump(self._by_key, out)
            os.replace(temporary, self.path)
        except OSError as exc:
            logger.warning("cannot keep the learned preloads in %s: %s", self.path, exc)
            if temporary is not None:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
