"""Which containment is chosen, and the command a child user's child is started with."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supervisor.process.cgroups import CgroupHost
from supervisor.process.confinement import Confinement, ConfinementError


def test_no_writable_cgroup_means_the_subreaper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hierarchy that is not a real cgroup file system (no cgroup.procs) is unusable."""
    (tmp_path / "unified").mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"cgroup2 {tmp_path / 'unified'} cgroup2 rw 0 0\n")
    own = tmp_path / "cgroup"
    own.write_text("0::/\n")
    assert CgroupHost.probe(str(mounts), str(own)) is None
    assert not list((tmp_path / "unified").iterdir()), "the probe leaves nothing behind"
    monkeypatch.setattr(CgroupHost, "probe", classmethod(lambda cls: None))
    auto = Confinement("auto")
    auto.open()
    assert auto.status()["mechanism"] == "subreaper"
    assert auto.environment({"A": "1"}, None) == {"A": "1"}
    with pytest.raises(ConfinementError, match="cannot make cgroups"):
        Confinement("cgroup").open()


def test_the_subreaper_mode_never_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    def probe(cls: type) -> None:
        raise AssertionError("probed")

    monkeypatch.setattr(CgroupHost, "probe", classmethod(probe))
    confinement = Confinement("subreaper")
    confinement.open()
    assert confinement.mechanism == "subreaper"
    with pytest.raises(ValueError):
        Confinement("container")


@pytest.mark.skipif(os.geteuid() != 0, reason="a child user needs root")
def test_a_child_user_is_started_through_setpriv_then_prlimit() -> None:
    confinement = Confinement(user="nobody", max_open_files=100)
    command = confinement.command(["python", "-m", "child"])
    assert command[0].endswith("setpriv")
    prlimit = next(i for i, part in enumerate(command) if part.endswith("prlimit"))
    assert {"--no-new-privs", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"} <= set(
        command[:prlimit]
    )
    assert {"--core=0:0", "--nofile=100:100"} <= set(command[prlimit:])
    assert command[-3:] == ["python", "-m", "child"]
    env = confinement.environment({"HOME": "/root"}, None)
    assert env["HOME"] != "/root" and env["USER"] == "nobody"
