"""Where the replicas of one Serve app post their status, so that any of them answers for all.

Serve's proxy sends ``/cluster/health`` to one replica, which knows only its own
supervisor. So every replica posts its status every few seconds to one small
Ray actor per app (named ``appvisor-status:{app}``, no CPU), and reads the
others' from it. The actor is created by the first replica that posts, and
belongs to it: when that replica goes (a lost node), the board goes with it and
the next post creates another, which fills up again within one period. Entries
expire after ``ttl`` seconds, so a replica that stopped posting (dead, or its
node lost) drops out without anyone telling the board.

The board also relays cancels: ``POST /cancel/{id}`` reaches whichever replica
the router picks; one that does not run the request asks the board, every
replica looks for such asks every ``CANCEL_POLL`` seconds and answers whether it
found (and cancelled) the request, and the asker answers 200 as soon as one
did, 404 once every live replica said no.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import anyio
import ray
from ray.exceptions import RayActorError

NAMESPACE = "appvisor"
CANCEL_POLL = 0.25
"""Seconds between a replica's looks for cancels that another replica relays."""


def live_entries(
    entries: Mapping[str, tuple[float, dict[str, Any]]], now: float
) -> dict[str, dict[str, Any]]:
    """The statuses whose deadline has not passed."""
    return {replica: status for replica, (deadline, status) in entries.items() if deadline > now}


def cancel_outcome(answers: Mapping[str, bool], live: Iterable[str]) -> bool | None:
    """A relayed cancel: done when a replica found the request, failed when every
    live replica answered that it has none, else still open (None)."""
    if any(answers.values()):
        return True
    return False if set(live) <= set(answers) else None


class StatusBoard:
    """The actor: a dict of replica id to (deadline, status), and the cancels being relayed."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[float, dict[str, Any]]] = {}
        self.cancels: dict[str, tuple[float, dict[str, bool]]] = {}
        """Request id to (deadline, replica id to whether it found the request)."""

    def post(self, replica: str, status: dict[str, Any], ttl: float) -> None:
        now = time.monotonic()
        self.entries = {key: entry for key, entry in self.entries.items() if entry[0] > now} | {
            replica: (now + ttl, status)
        }

    def remove(self, replica: str) -> None:
        self.entries.pop(replica, None)

    def read(self) -> dict[str, dict[str, Any]]:
        return live_entries(self.entries, time.monotonic())

    def ask_cancel(self, request_id: str, asker: str, ttl: float) -> None:
        self.cancels[request_id] = (time.monotonic() + ttl, {asker: False})

    def pending_cancels(self, replica: str) -> list[str]:
        now = time.monotonic()
        self.cancels = {key: ask for key, ask in self.cancels.items() if ask[0] > now}
        return [key for key, (_, answers) in self.cancels.items() if replica not in answers]

    def answer_cancel(self, request_id: str, replica: str, found: bool) -> None:
        if request_id in self.cancels:
            self.cancels[request_id][1][replica] = found

    def cancel_outcome(self, request_id: str) -> bool | None:
        ask = self.cancels.get(request_id)
        if ask is None:
            return False
        return cancel_outcome(ask[1], self.read())


RemoteBoard: Any = ray.remote(num_cpus=0)(StatusBoard)


def board_name(app: str) -> str:
    return f"appvisor-status:{app}"


_handles: dict[str, Any] = {}
"""Handles kept for the process's lifetime: a named actor that is not detached
dies when its creator drops the last reference to it."""


def _board(app: str) -> Any:
    handle = _handles.get(app)
    if handle is None:
        handle = RemoteBoard.options(
            name=board_name(app), namespace=NAMESPACE, get_if_exists=True
        ).remote()
        _handles[app] = handle
    return handle


def _forget(app: str) -> None:
    """After a call found the board dead: the next one finds or creates another."""
    _handles.pop(app, None)


async def _call(app: str, method: str, *args: Any) -> Any:
    """One call on the app's board; a dead board is forgotten, and the error raised."""
    try:
        return await getattr(_board(app), method).remote(*args)
    except RayActorError:
        _forget(app)
        raise


async def post(app: str, replica: str, status: dict[str, Any], ttl: float) -> None:
    """Post one replica's status; a board that died with its owner is created again."""
    try:
        await _call(app, "post", replica, status, ttl)
    except RayActorError:
        await _call(app, "post", replica, status, ttl)


async def read(app: str) -> dict[str, dict[str, Any]]:
    """Every live replica's last status (``{}`` when the board is being replaced)."""
    try:
        result: dict[str, dict[str, Any]] = await _call(app, "read")
    except RayActorError:
        return {}
    return result


async def remove(app: str, replica: str) -> None:
    await _call(app, "remove", replica)


async def relay_cancel(app: str, request_id: str, asker: str, timeout: float) -> bool:
    """Ask the app's other replicas to cancel ``request_id``; True once one of them did.

    Each replica looks for cancels to relay every ``CANCEL_POLL`` seconds, so the
    answer takes about that long; False when every live replica said it has no
    such request, when the board is being replaced, or after ``timeout``.
    """
    try:
        await _call(app, "ask_cancel", request_id, asker, timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            outcome = await _call(app, "cancel_outcome", request_id)
            if outcome is not None:
                return bool(outcome)
            await anyio.sleep(CANCEL_POLL / 4)
    except RayActorError:
        pass
    return False


async def pending_cancels(app: str, replica: str) -> list[str]:
    result: list[str] = await _call(app, "pending_cancels", replica)
    return result


async def answer_cancel(app: str, request_id: str, replica: str, found: bool) -> None:
    await _call(app, "answer_cancel", request_id, replica, found)
