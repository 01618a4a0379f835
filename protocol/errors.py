"""Exceptions for protocol violations.

As in h11, whose fault it was is part of the type: a ``LocalProtocolError`` means
this side tried to send something the protocol does not allow (a bug here); a
``RemoteProtocolError`` means the peer sent bytes or messages that break the
protocol (a bug, or a crash, over there). Both leave the connection unusable.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The wire protocol was violated; the connection cannot be used any more."""


class LocalProtocolError(ProtocolError):
    """This side attempted something the protocol forbids."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed or out of order."""
