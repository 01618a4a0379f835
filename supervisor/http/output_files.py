"""``run`` keeps the files an app returns: copies in an output directory.

An app's output ``File`` is a path in the app's own space, which its
``unload`` may delete (``examples/image`` removes its temporary directory), and
``run`` unloads the app before it exits. So the files are copied to the output
directory first (the current one by default, like ``cog predict``), and the
printed output points at the copies. Which values are files is read from the
function's output schema (``{"type": "string", "format": "file"}``), as the
HTTP server does; an existing file is never overwritten (``name-1.png``).
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .files import file_locations, get_at, safe_filename


def keep_output_files(output: Any, schema: Mapping[str, Any] | None, out_dir: Path) -> Any:
    """``output`` with each File copied into ``out_dir`` and pointing at its copy."""
    locations = file_locations(schema, output) if schema else []
    if not locations:
        return output
    kept = copy.deepcopy(output)
    for loc in locations:
        value = get_at(kept, loc)
        if not _is_local_file(value):
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        name = safe_filename(value.get("filename") or os.path.basename(value["path"]), "output")
        target = _free_name(out_dir / name)
        shutil.copyfile(value["path"], target)
        value["path"] = value["uri"] = str(target.resolve())
        value["filename"] = target.name
    return kept


def _is_local_file(value: Any) -> bool:
    """A File as the child sends it, naming a regular file (not a device or a pipe)."""
    return (
        isinstance(value, dict)
        and isinstance(value.get("path"), str)
        and os.path.isfile(value["path"])
    )


def _free_name(path: Path) -> Path:
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
