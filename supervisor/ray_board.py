"""Where the replicas of one Serve app post their status, so that any of them answers for all.

Serve's proxy sends ``/cluster/health`` to one replica, which knows only its own
supervisor. So every replica posts its status every few seconds to one small
Ray actor per app (named ``appvisor-status:{app}``, no CPU), and reads the
others' from it. The actor is created by the first replica that posts, and
belongs to it: when that replica goes (a lost node), the board goes with it and
the next post creates another, which fills up again within one period. Entries
expire after ``ttl`` seconds, so a replica that stopped posting (dead, or its
node lost) drops out without anyone telling the board.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import ray
from ray.exceptions import RayActorError

NAMESPACE = "appvisor"


def live_entries(
    entries: Mapping[str, tuple[float, dict[str, Any]]], now: float
) -> dict[str, dict[str, Any]]:
    """The statuses whose deadline has not passed."""
    return {replica: status for replica, (deadline, status) in entries.items() if deadline > now}


class StatusBoard:
    """The actor: a dict of replica id to (deadline, status)."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, dict[str, Any]]] = {}

    def post(self, replica: str, status: dict[str, Any], ttl: float) -> None:
        now = time.monotonic()
        self.entries = {key: entry for key, entry in self.entries.items() if entry[0] > now} | {
            replica: (now + ttl, status)
        }

    def remove(self, replica: str) -> None:
        self.entries.pop(replica, None)

    def read(self) -> dict[str, dict[str, Any]]:
        return live_entries(self.entries, time.monotonic())


RemoteBoard: Any = ray.remote(num_cpus=0)(StatusBoard)


def board_name(app: str) -> str:
    return f"appvisor-status:{app}"


def _board(app: str) -> Any:
    return RemoteBoard.options(
        name=board_name(app), namespace=NAMESPACE, get_if_exists=True
    ).remote()


async def post(app: str, replica: str, status: dict[str, Any], ttl: float) -> None:
    """Post one replica's status; a board that died with its owner is created again."""
    for attempt in range(2):
        try:
            await _board(app).post.remote(replica, status, ttl)
            return
        except RayActorError:
            if attempt:
                raise


async def read(app: str) -> dict[str, dict[str, Any]]:
    """Every live replica's last status (``{}`` when the board is being replaced)."""
    try:
        result: dict[str, dict[str, Any]] = await _board(app).read.remote()
    except RayActorError:
        return {}
    return result


async def remove(app: str, replica: str) -> None:
    await _board(app).remove.remote(replica)
