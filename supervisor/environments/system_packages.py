"""``packages.txt``: the Debian packages an app needs, checked (not installed) at start.

The runtime installs no system packages; it says at start which listed ones are
missing, so that "ffmpeg: not found" in the middle of a request is not the first
sign. A package counts as present when dpkg reports it installed, or when a
command of its name is on ``PATH`` (ffmpeg from a static build, a machine
without dpkg).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

PACKAGES_FILE = "packages.txt"


def listed_packages(app_dir: Path) -> list[str]:
    """The package names in ``packages.txt`` (blank lines and comments skipped)."""
    path = app_dir / PACKAGES_FILE
    if not path.is_file():
        return []
    names: list[str] = []
    for line in path.read_text().splitlines():
        names += line.split("#", 1)[0].split()
    return names


def missing_packages(
    names: Iterable[str], installed: Callable[[list[str]], set[str]] | None = None
) -> list[str]:
    """The names that are neither installed (``installed``: dpkg by default) nor a
    command on ``PATH``."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return []
    present = (installed or dpkg_installed)(wanted)
    return [n for n in wanted if n not in present and shutil.which(n) is None]


def dpkg_installed(names: list[str]) -> set[str]:
    """Which of ``names`` dpkg reports installed; none when there is no dpkg."""
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *names],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return set()
    found = set()
    for line in done.stdout.splitlines():
        package, _, status = line.partition(" ")
        if status.split()[-1:] == ["installed"]:  # not half-installed, not config-files
            found.add(package.split(":")[0])
    return found
