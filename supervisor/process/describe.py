"""Describe an app without setting it up: what ``appvisor schema`` prints.

A child started with an app directory imports the app and sends its
description in its ``hello``, before any ``setup``. Reading that one message
and shutting the child down costs an import, not a model load, and needs no
setup values, however many the app requires. The supervisor still never
imports the app itself: the child does, in its own process.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from protocol import Connection, Error, Hello, Shutdown
from protocol.streams import SyncChannel

from ..environments.app_config import AppConfigError, open_app_dir
from ..environments.environment import child_environment
from ..environments.node_runtime import prepare_node_app
from ..errors import LoadFailedError, ProtocolViolationError, SetupFailedError, from_error_info
from .child_launch import node_command


def describe_app(
    app_dir: str | Path, *, timeout: float = 300.0, python: str = sys.executable
) -> dict[str, Any]:
    """The app description (``name``, ``functions``, ``setup_schema``) of ``app_dir``.

    Raises ``LoadFailedError`` when the directory is no app or its import fails,
    ``SetupFailedError`` when the child dies or takes longer than ``timeout``.
    """
    try:
        directory, manifest = open_app_dir(app_dir)
    except AppConfigError as exc:
        raise LoadFailedError(str(exc)) from exc
    env = child_environment(manifest.env, cuda_visible_devices="", python=python)
    if manifest.runtime == "node":
        node = prepare_node_app(directory, manifest)
        env.update(node.env)
        process = _start_node(node.node, directory, env)
    else:
        process = subprocess.Popen(
            [python, "-m", "child", str(directory)],
            cwd=directory,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
    assert process.stdin is not None and process.stdout is not None
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    channel = SyncChannel(
        Connection("supervisor"),
        functools.partial(os.read, process.stdout.fileno()),
        _writer(process.stdin),
    )
    try:
        hello = channel.receive()
        if not isinstance(hello, Hello):  # pragma: no cover - the protocol layer checks this
            raise ProtocolViolationError(f"expected hello, got {hello.TYPE}")
        if hello.app is None:
            notice = channel.receive()
            if isinstance(notice, Error):
                raise from_error_info(notice.error)
            raise LoadFailedError(f"{directory}: the child loaded no app")
        description = dict(hello.app)
        with contextlib.suppress(OSError, ValueError):
            channel.send(Shutdown())
        return description
    except EOFError:
        timed_out = not timer.is_alive()
        raise SetupFailedError(
            f"{directory}: the child "
            + (
                f"took longer than {timeout:g} s"
                if timed_out
                else "exited before describing the app"
            )
        ) from None
    finally:
        timer.cancel()
        _close(process)


def _start_node(node: str, directory: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The JavaScript child, its protocol on stdin and an extra descriptor (see
    ``ChildProcess.spawn_with_captured_stdio``); its ``stdout`` attribute is made
    the protocol's read end, so that the caller reads it as for a Python child."""
    out_read, out_write = os.pipe()
    capture_out_read, capture_out_write = os.pipe()
    capture_err_read, capture_err_write = os.pipe()
    stderr = os.dup(2)
    theirs = (out_write, capture_out_read, capture_out_write, capture_err_read, capture_err_write)
    try:
        argv = node_command(
            node, str(directory), out_write, capture_out_read, capture_err_read, stderr
        )
        process = subprocess.Popen(
            argv,
            cwd=directory,
            env=env,
            stdin=subprocess.PIPE,
            stdout=capture_out_write,
            stderr=capture_err_write,
            pass_fds=(out_write, capture_out_read, capture_err_read, stderr),
        )
    except BaseException:
        os.close(out_read)
        raise
    finally:
        for fd in (*theirs, stderr):
            os.close(fd)
    process.stdout = os.fdopen(out_read, "rb", buffering=0)
    return process


def _writer(stream: Any) -> Any:
    def write(data: bytes) -> None:
        stream.write(data)
        stream.flush()

    return write


def _close(process: subprocess.Popen[bytes]) -> None:
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
