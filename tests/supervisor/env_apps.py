"""App directories for the environment tests: the probe app with given requirements.

The locks pin every package, so that a build resolves the same way every day;
the oldest and newest versions of the runtime's dependencies that public apps
lock (pydantic 2.10/2.13, anyio 4.10/4.14, msgpack 1.1/1.2, inferencesh
0.2.7/0.7.23) and two versions of the small ``six`` that two apps served at
once must each see as their own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PROBE = Path(__file__).resolve().parent.parent / "apps" / "env_probe"

OLD_LOCK = """\
# the oldest pins public apps lock
annotated-types==0.7.0
anyio==4.10.0
idna==3.10
inferencesh==0.2.7
msgpack==1.1.1
pydantic==2.10.6
pydantic-core==2.27.2
six==1.16.0
sniffio==1.3.1
tqdm==4.67.1
typing-extensions==4.12.2
"""

NEW_LOCK = """\
# the newest pins public apps lock
annotated-types==0.7.0
anyio==4.14.0
certifi==2025.11.12
charset-normalizer==3.4.4
idna==3.11
inferencesh==0.7.23
msgpack==1.2.1
pydantic==2.13.4
pydantic-core==2.46.4
requests==2.32.5
six==1.17.0
tqdm==4.67.1
typing-extensions==4.15.0
typing-inspection==0.4.2
urllib3==2.5.0
"""


def make_app(
    root: Path,
    name: str,
    *,
    lock: str | None = None,
    requirements: str | None = None,
    kernel: str | None = None,
    extra: str = "",
) -> Path:
    """A copy of the probe app named ``name`` under ``root``."""
    app = root / name
    app.mkdir(parents=True)
    shutil.copy(PROBE / "inference.py", app / "inference.py")
    (app / "__init__.py").write_text("")
    manifest = f"name: {name}\n" + (f"kernel: {kernel}\n" if kernel else "") + extra
    (app / "inf.yml").write_text(manifest)
    if lock is not None:
        (app / "requirements.lock").write_text(lock)
    if requirements is not None:
        (app / "requirements.txt").write_text(requirements)
    return app
