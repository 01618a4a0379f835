"""Which library modules loading and setting up an app imported.

A fork server (``child.fork_server``) imports these before it forks the next child
of the same environment, so that an app's heavy imports (``torch``, and the
submodules that lazy packages such as ``transformers`` import only when a model
is built) are paid once per environment, not once per start. Only modules of the
interpreter's own libraries count (the standard library and site-packages): never
the app's own files, which may change and which must run in its own directory.
"""

from __future__ import annotations

import sys
import sysconfig
from collections.abc import Iterable

MAX_MODULES = 4000
"""A bound on what one setup reports (torch alone is about 1,500 modules)."""


def library_roots() -> tuple[str, ...]:
    """The directories this interpreter's installed modules live in."""
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    return tuple(sorted(root.rstrip("/") + "/" for root in roots))


def imported_since(before: Iterable[str], roots: tuple[str, ...] | None = None) -> list[str]:
    """Modules imported since ``before`` (a snapshot of ``sys.modules``' names) whose
    files are under ``roots``, in the order they were imported."""
    seen = set(before)
    roots = library_roots() if roots is None else roots
    found = []
    for name, module in list(sys.modules.items()):
        if name in seen or name == "__main__":
            continue
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.startswith(roots):
            found.append(name)
            if len(found) >= MAX_MODULES:
                break
    return found
