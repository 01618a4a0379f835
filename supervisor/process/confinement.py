"""How children are confined: the mechanism that holds their processes, and whose they are.

Containment is a cgroup per child where the host lets the supervisor make them
(``cgroups``: the kernel kills the whole group and enforces a hard memory
limit), and otherwise the child's own subreaper (``child.reaper``), which works
everywhere on Linux and is in place under a cgroup as well.

With a child user (``serve --child-user``, ``Supervisor(child_user=...)``),
children run as that unprivileged user instead of the supervisor's: the
interpreter is started through ``setpriv`` (the user's uid and gid, no
supplementary groups, no capabilities, no new privileges) and then ``prlimit``
(core dumps off, a file descriptor limit), both from util-linux, so the
interpreter itself is executed as the user and never runs as root. That user
must be able to read the interpreter, its packages and the app;
``check_interpreter`` says so clearly before any app starts.

This is not a container: the child still sees the host's file system (what its
user may read), network and process list.
"""

from __future__ import annotations

import logging
import os
import pwd
import resource
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .cgroups import CGROUPS_ENV, CgroupHost, ChildCgroup

logger = logging.getLogger("supervisor.confinement")

MODES = ("auto", "cgroup", "subreaper")
DEFAULT_MAX_OPEN_FILES = 16384
RUNTIME_IMPORTS = "import child.__main__, msgpack, pydantic, anyio"


class ConfinementError(Exception):
    """The confinement asked for cannot be had here; the message says why and what to do."""


@dataclass(frozen=True)
class ChildUser:
    """The account children run as (``--child-user``), resolved once."""

    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def lookup(cls, name: str) -> ChildUser:
        try:
            entry = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
        except KeyError:
            raise ConfinementError(f"no user named {name!r} on this host") from None
        if entry.pw_uid == 0:
            raise ConfinementError(f"the child user {name!r} is root: choose an unprivileged one")
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


class Confinement:
    def __init__(
        self,
        mode: str = "auto",
        user: str | None = None,
        max_open_files: int = DEFAULT_MAX_OPEN_FILES,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"containment must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self.user = ChildUser.lookup(user) if user is not None else None
        self.max_open_files = max_open_files
        self.cgroups: CgroupHost | None = None
        self._tools: tuple[str, str] | None = None
        if self.user is not None:
            if os.geteuid() != 0:
                raise ConfinementError("a child user needs the supervisor to run as root")
            prlimit, setpriv = shutil.which("prlimit"), shutil.which("setpriv")
            if prlimit is None or setpriv is None:
                raise ConfinementError("a child user needs prlimit and setpriv (util-linux)")
            self._tools = (prlimit, setpriv)

    def open(self) -> None:
        """Find what the host allows; with mode ``cgroup``, fail where it allows none."""
        if self.mode != "subreaper":
            self.cgroups = CgroupHost.probe()
            if self.cgroups is None and self.mode == "cgroup":
                raise ConfinementError(
                    "containment 'cgroup' asked for, but this process cannot make cgroups "
                    "(it needs a writable cgroup hierarchy, usually root)"
                )
        logger.info("children are contained by %s", self.describe())

    def close(self) -> None:
        if self.cgroups is not None:
            self.cgroups.close()
            self.cgroups = None

    @property
    def mechanism(self) -> str:
        return "cgroup" if self.cgroups is not None else "subreaper"

    def describe(self) -> str:
        text = (
            self.cgroups.describe()
            if self.cgroups is not None
            else "the child's subreaper (no cgroup here)"
        )
        if self.user is not None:
            text += f"; children run as {self.user.name!r} (uid {self.user.uid})"
        return text

    def status(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "description": self.describe(),
            "hard_memory_limit": bool(self.cgroups and self.cgroups.memory),
            "child_user": self.user.name if self.user else None,
        }

    # -- per child --------------------------------------------------------------

    def new_cgroup(self, label: str) -> ChildCgroup | None:
        if self.cgroups is None:
            return None
        return self.cgroups.create(label)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as it is executed: through setpriv, then prlimit, with a child user.

        prlimit runs as the user already, without capabilities, so that the
        interpreter is looked up and executed with the user's rights only (setpriv
        itself still executes with root's, which would hide an unreadable one).
        """
        if self.user is None or self._tools is None:
            return list(argv)
        prlimit, setpriv = self._tools
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        files = (
            self.max_open_files
            if hard == resource.RLIM_INFINITY
            else min(self.max_open_files, hard)
        )
        return [
            setpriv,
            f"--reuid={self.user.uid}",
            f"--regid={self.user.gid}",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            prlimit,
            "--core=0:0",
            f"--nofile={files}:{files}",
            "--",
            *argv,
        ]

    def environment(self, env: Mapping[str, str], cgroup: ChildCgroup | None) -> dict[str, str]:
        result = dict(env)
        if self.user is not None:
            result.update(HOME=self.user.home, USER=self.user.name, LOGNAME=self.user.name)
        if cgroup is not None:
            result[CGROUPS_ENV] = ";".join(cgroup.names)
        return result

    def check_interpreter(self, python: str, env: Mapping[str, str]) -> None:
        """Raise ``ConfinementError`` when the child user cannot run ``python -m child``."""
        if self.user is None:
            return
        try:
            done = subprocess.run(
                self.command([python, "-c", RUNTIME_IMPORTS]),
                env=self.environment(env, None),
                cwd="/",
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfinementError(f"cannot check the interpreter {python}: {exc}") from exc
        if done.returncode == 0:
            return
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        if done.returncode in (126, 127) or "Permission denied" in done.stderr:
            raise ConfinementError(
                f"the child user {self.user.name!r} cannot execute the interpreter {python}: "
                f"{tail}. Its directories must be readable and searchable by that user (a "
                "Python under /root is not); use an interpreter every user can run, such as "
                "the distribution's /usr/bin/python3, with the runtime's packages readable"
            )
        raise ConfinementError(
            f"the child user {self.user.name!r} can run {python} but not the runtime: {tail}. "
            "The runtime's packages (appvisor, msgpack, pydantic, anyio) must be readable "
            "by that user"
        )
