"""What an app directory declares about itself in ``inf.yml``.

Only the keys the supervisor acts on are read: ``name``, ``env``,
``resources`` (GPU count, VRAM per GPU and RAM, in bytes), ``kernel`` (the
Python version, or ``node-*``, which with the entry point present chooses the
child runtime) and the declared ``secrets`` and ``integrations``. A missing file means
defaults; a malformed one is an error that names the file, so that a typo does
not silently run an app without its limits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .app_secrets import DeclaredSecret

NO_GPU_TYPES = frozenset({"none", "apple"})


class AppConfigError(ValueError):
    pass


@dataclass(frozen=True)
class AppManifest:
    """What an app's ``inf.yml`` asks for, validated."""

    name: str
    env: Mapping[str, str] = field(default_factory=dict)
    gpu_count: int = 0
    vram: int | None = None
    """Bytes of VRAM the app needs on each of its GPUs."""
    ram: int | None = None
    """Bytes of host memory the app may use."""
    kernel: str | None = None
    """``kernel:`` as written, e.g. ``python-3.11``, ``3.12`` or ``node-22``."""
    secrets: tuple[DeclaredSecret, ...] = ()
    """``secrets:`` then ``integrations:``, each key once."""
    runtime: str = "python"
    """Which child runtime serves it: ``python`` (inference.py) or ``node`` (inference.js)."""


def read_manifest(app_dir: Path) -> AppManifest:
    path = app_dir / "inf.yml"
    if not path.exists():
        return AppManifest(name=app_dir.name)
    import yaml  # 10 ms, for apps that have an inf.yml only

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AppConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise AppConfigError(f"{path}: expected a mapping at the top level")
    resources = _mapping(data.get("resources"), path, "resources")
    gpu = _mapping(resources.get("gpu"), path, "resources.gpu")
    env = _mapping(data.get("env"), path, "env")
    gpu_type = str(gpu.get("type", "any")).lower()
    count = (
        0 if gpu_type in NO_GPU_TYPES else _int(gpu.get("count", 0), path, "resources.gpu.count")
    )
    return AppManifest(
        name=str(data.get("name") or app_dir.name),
        env={str(k): str(v) for k, v in env.items()},
        gpu_count=count,
        vram=_optional_int(gpu.get("vram"), path, "resources.gpu.vram"),
        ram=_optional_int(resources.get("ram"), path, "resources.ram"),
        kernel=_kernel(data.get("kernel")),
        secrets=_secrets(data, path),
    )


def _kernel(value: Any) -> str | None:
    """The kernel as written; YAML reads an unquoted ``3.10`` as the number 3.1."""
    if value is None:
        return None
    if isinstance(value, float):
        return "3.10" if value == 3.1 else str(value)
    return str(value).strip() or None


def _secrets(data: Mapping[str, Any], path: Path) -> tuple[DeclaredSecret, ...]:
    found: dict[str, DeclaredSecret] = {}
    for section in ("secrets", "integrations"):
        entries = data.get(section) or []
        if not isinstance(entries, list):
            raise AppConfigError(f"{path}: {section} must be a list")
        for i, entry in enumerate(entries):
            if isinstance(entry, str):
                entry = {"key": entry}
            if not isinstance(entry, Mapping) or not entry.get("key"):
                raise AppConfigError(f"{path}: {section}[{i}] must be a mapping with a key")
            key = str(entry["key"])
            found.setdefault(
                key,
                DeclaredSecret(
                    key=key,
                    description=str(entry.get("description") or ""),
                    optional=bool(entry.get("optional", False)),
                ),
            )
    return tuple(found.values())


def _mapping(value: Any, path: Path, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AppConfigError(f"{path}: {key} must be a mapping")
    return value


def _int(value: Any, path: Path, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise AppConfigError(f"{path}: {key} must be a non-negative number, got {value!r}")
    return int(value)


def _optional_int(value: Any, path: Path, key: str) -> int | None:
    return None if value in (None, 0) else _int(value, path, key)


NODE_ENTRY_POINTS = ("inference.js", "src/inference.js")


def choose_runtime(app_dir: Path, kernel: str | None) -> str:
    """``node`` for an app with an ``inference.js`` (at the root or under ``src/``)
    and no ``inference.py``, or whose ``kernel:`` is ``node-*``; else ``python``.
    ``AppConfigError`` when the entry point that runtime needs is missing."""
    has_python = (app_dir / "inference.py").is_file()
    has_node = any((app_dir / entry).is_file() for entry in NODE_ENTRY_POINTS)
    wants_node = (kernel or "").strip().lower().startswith("node")
    if wants_node and not has_node:
        raise AppConfigError(f"{app_dir}: kernel {kernel!r} needs inference.js or src/inference.js")
    if wants_node or (has_node and not has_python):
        return "node"
    if not has_python:
        raise AppConfigError(
            f"{app_dir} is not an app directory (no inference.py, inference.js or src/inference.js)"
        )
    return "python"


def open_app_dir(app_dir: str | Path) -> tuple[Path, AppManifest]:
    """Resolve an app directory and read its manifest; ``AppConfigError`` if it is
    no app directory or its ``inf.yml`` is malformed."""
    directory = Path(app_dir).resolve()
    if not directory.is_dir():
        raise AppConfigError(f"{directory} is not an app directory (not a directory)")
    manifest = read_manifest(directory)
    return directory, replace(manifest, runtime=choose_runtime(directory, manifest.kernel))
