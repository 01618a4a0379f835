"""Per-app virtual environments: built once, shared by content, kept on disk.

Each environment is a directory ``ROOT/KEY`` (``env_spec.EnvSpec.key``); it is
complete once its ``appvisor-env.json`` exists, which is written last. A build
holds two locks: an anyio lock, so that concurrent starts in this process wait
for one build, and a file lock (``ROOT/KEY.lock``), so that two supervisors
sharing the cache do too. A directory without its marker is a build that died
half-way, and is removed and built again.

The installer is ``uv`` when it can be found (the ``uv`` package ships its
binary), else ``pip``; see benchmarks/README.md for why. Bytecode is compiled
at install time (pip does it anyway; uv is told to), as every child start would
otherwise compile its imports again where ``PYTHONDONTWRITEBYTECODE`` is set. Both read their usual
settings from the environment (``UV_INDEX_URL``, ``UV_FIND_LINKS``,
``PIP_INDEX_URL``, ...): with uv, the ``PIP_`` index and find-links settings are
passed on as their ``UV_`` twins when those are not set, so one offline mirror
setting serves both. Its output is passed line by line to ``on_progress``, and
its last lines go into ``EnvironmentFailedError`` when it fails.

The runtime reaches the environment as links: ``KEY/appvisor-runtime`` holds
``child`` and ``protocol`` pointing at the supervisor's own packages, and is
the only thing the child gets on ``PYTHONPATH`` (``runtime_path``), so the
supervisor's own site-packages never shadow the app's pins.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio

from ..errors import EnvironmentFailedError
from .env_layout import (
    ENV_CACHE_VAR as ENV_CACHE_VAR,  # re-exported: the builder's callers use them
)
from .env_layout import MARKER as MARKER
from .env_layout import RUNTIME_DIR as RUNTIME_DIR
from .env_layout import default_root as default_root
from .env_layout import runtime_path as runtime_path
from .env_spec import RUNTIME_REQUIREMENTS, EnvSpec, failing_requirement

OUTPUT_TAIL = 30
"""Lines of the installer's output kept for an error report."""
RUNTIME_PACKAGES = ("child", "protocol")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]
_PIP_TO_UV = {
    "PIP_INDEX_URL": "UV_INDEX_URL",
    "PIP_EXTRA_INDEX_URL": "UV_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS": "UV_FIND_LINKS",
    "PIP_NO_INDEX": "UV_NO_INDEX",
}

Installer = Literal["uv", "pip"]
Progress = Callable[[str], None]


def find_uv() -> str | None:
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


@dataclass(frozen=True)
class EnvRecord:
    """One built (or half-built) environment in the cache."""

    key: str
    path: Path
    complete: bool
    info: dict[str, Any]
    last_used: float
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "path": str(self.path),
            "complete": self.complete,
            "last_used": self.last_used,
            "size": self.size,
            **self.info,
        }


class EnvCache:
    def __init__(self, root: str | Path | None = None, installer: Installer | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        uv = find_uv()
        self.installer: Installer = installer or ("uv" if uv else "pip")
        if self.installer == "uv" and uv is None:
            raise ValueError("the uv installer was asked for but uv is not installed")
        self._uv = uv
        self._locks: dict[str, anyio.Lock] = {}
        self.builds = 0
        """Environments this cache built (not found ready)."""

    def is_ready(self, spec: EnvSpec) -> bool:
        return (self.root / spec.key / MARKER).is_file()

    async def ensure(self, spec: EnvSpec, on_progress: Progress | None = None) -> str:
        """The environment's interpreter, built first unless it is ready."""
        report = on_progress or (lambda line: None)
        path = self.root / spec.key
        async with self._locks.setdefault(spec.key, anyio.Lock()):
            if not (path / MARKER).is_file():
                self.root.mkdir(parents=True, exist_ok=True)
                async with _file_lock(self.root / f"{spec.key}.lock", report):
                    if not (path / MARKER).is_file():
                        await self._build(spec, path, report)
            _link_runtime(path)
            os.utime(path / MARKER)  # last used, for prune
        return str(path / "bin" / "python")

    async def _build(self, spec: EnvSpec, path: Path, report: Progress) -> None:
        if path.exists():
            report(f"removing an unfinished build at {path}")
            await anyio.to_thread.run_sync(shutil.rmtree, path)
        started = time.monotonic()
        report(
            f"building {spec.key} from {spec.requirements.name} for Python "
            f"{spec.python.version} with {self.installer}"
        )
        try:
            for argv, cwd in self._commands(spec, path):
                await self._run(argv, cwd, spec, report)
            _link_runtime(path)
            seconds = time.monotonic() - started
            info = {
                "requirements": str(spec.requirements),
                "python": spec.python.path,
                "python_version": spec.python.version,
                "installer": self.installer,
                "built_at": time.time(),
                "build_seconds": round(seconds, 3),
            }
            (path / MARKER).write_text(json.dumps(info, indent=1))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(lambda: shutil.rmtree(path, ignore_errors=True))
            raise
        self.builds += 1
        report(f"built {spec.key} in {seconds:.1f} s")

    def _commands(self, spec: EnvSpec, path: Path) -> list[tuple[list[str], Path]]:
        python = str(path / "bin" / "python")
        requirements = ["-r", str(spec.requirements), *RUNTIME_REQUIREMENTS]
        app_dir = spec.requirements.parent  # relative paths in the file resolve from there
        if self.installer == "uv":
            assert self._uv is not None
            uv = self._uv
            install = [uv, "pip", "install", "--compile-bytecode", "--python", python]
            return [
                ([uv, "venv", "--quiet", "--python", spec.python.path, str(path)], self.root),
                ([*install, *requirements], app_dir),
            ]
        return [
            ([spec.python.path, "-m", "venv", str(path)], self.root),
            (
                [python, "-m", "pip", "install", "--disable-pip-version-check", *requirements],
                app_dir,
            ),
        ]

    async def _run(self, argv: Sequence[str], cwd: Path, spec: EnvSpec, report: Progress) -> None:
        tail: deque[str] = deque(maxlen=OUTPUT_TAIL)
        process = await anyio.open_process(
            list(argv), stdout=-1, stderr=-2, cwd=cwd, env=self._installer_env()
        )
        try:
            assert process.stdout is not None
            async for line in _lines(process.stdout):
                tail.append(line)
                report(line)
            code = await process.wait()
        finally:
            if process.returncode is None:
                with anyio.CancelScope(shield=True):
                    process.kill()
                    await process.wait()
        if code != 0:
            output = "\n".join(tail)
            requirement = failing_requirement(output, spec.content)
            about = f" ({requirement})" if requirement else ""
            raise EnvironmentFailedError(
                f"installing {spec.requirements} for Python {spec.python.version} "
                f"failed{about}: {Path(argv[0]).name} exited with {code}",
                requirement=requirement,
                installer_output=output,
                requirements_file=str(spec.requirements),
            )

    def _installer_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("VIRTUAL_ENV", None)  # the target is named explicitly
        if self.installer == "uv":
            for pip_name, uv_name in _PIP_TO_UV.items():
                if pip_name in env and uv_name not in env:
                    env[uv_name] = env[pip_name]
        return env

    # -- list and prune ------------------------------------------------------------

    def records(self) -> list[EnvRecord]:
        if not self.root.is_dir():
            return []
        records = []
        for path in sorted(p for p in self.root.iterdir() if p.is_dir()):
            marker = path / MARKER
            complete = marker.is_file()
            info = json.loads(marker.read_text()) if complete else {}
            last_used = marker.stat().st_mtime if complete else path.stat().st_mtime
            records.append(EnvRecord(path.name, path, complete, info, last_used, _size(path)))
        return records

    def prune(self, older_than: float = 0.0) -> list[EnvRecord]:
        """Remove environments not used for ``older_than`` seconds, and unfinished
        builds, except those being built now; return what was removed."""
        removed = []
        now = time.time()
        for record in self.records():
            if record.complete and now - record.last_used < older_than:
                continue
            import filelock  # only an environment's build or removal needs it

            lock = filelock.FileLock(str(self.root / f"{record.key}.lock"))
            try:
                lock.acquire(timeout=0)
            except filelock.Timeout:
                continue  # being built
            try:
                shutil.rmtree(record.path, ignore_errors=True)
                removed.append(record)
            finally:
                # The lock file stays: one removed while another process opens it
                # would let two processes hold "the" lock at once.
                lock.release()
        return removed


@contextlib.asynccontextmanager
async def _file_lock(path: Path, report: Progress) -> AsyncIterator[None]:
    """Hold ``path``'s file lock, polling so that a cancelled start stops waiting."""
    import filelock  # only an environment's build needs it

    lock = filelock.FileLock(str(path))
    waiting = False
    while True:
        try:
            lock.acquire(timeout=0)
            break
        except filelock.Timeout:
            if not waiting:
                report(f"waiting for another process building {path.stem}")
                waiting = True
            await anyio.sleep(0.2)
    try:
        yield
    finally:
        lock.release()


async def _lines(stream: Any) -> AsyncIterator[str]:
    pending = b""
    async for chunk in stream:
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                yield text
    if pending.strip():
        yield pending.decode("utf-8", "replace").rstrip()


def _link_runtime(path: Path) -> None:
    """Point ``path/appvisor-runtime/{child,protocol}`` at this supervisor's packages
    (each link replaced atomically, so a concurrent start never sees it missing)."""
    runtime = path / RUNTIME_DIR
    runtime.mkdir(exist_ok=True)
    for package in RUNTIME_PACKAGES:
        target = _PACKAGE_ROOT / package
        link = runtime / package
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        temporary = runtime / f".{package}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(target, target_is_directory=True)
        os.replace(temporary, link)


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total
