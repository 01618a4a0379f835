"""Which remote addresses the server may fetch a file input from: a pure decision.

A URL in a file input makes the server open a connection on a client's behalf,
so without a rule a client could reach what only the server can reach: its own
loopback ports, the private network, a cloud metadata service. The rule is
decided on the address a name resolves to (each hop of a redirect again), and
refuses every address that is not public unless the operator allowed it by
name, by network or by ``host:port`` (``--allow-fetch``).

``url_fetch`` is the mechanism that applies it; nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MAX_BYTES = 2**30
DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_REDIRECTS = 5


@dataclass(frozen=True)
class AllowRule:
    """One ``--allow-fetch`` entry: a host name or a network, optionally one port."""

    host: str | None = None
    network: IPNetwork | None = None
    port: int | None = None

    @classmethod
    def parse(cls, entry: str) -> AllowRule:
        """``HOST``, ``HOST:PORT``, ``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or ``CIDR``."""
        text = entry.strip()
        if not text:
            raise ValueError("an empty --allow-fetch entry")
        if "/" in text:
            return cls(network=ipaddress.ip_network(text, strict=False))
        port: int | None = None
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"{entry!r}: expected [IPv6]:PORT")
                port = _port(rest[1:], entry)
        elif text.count(":") == 1:
            host, raw_port = text.split(":")
            port = _port(raw_port, entry)
        else:
            host = text
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            if not host or any(c in host for c in " /@"):
                raise ValueError(f"{entry!r} is not a host name, address or network") from None
            return cls(host=host.lower().rstrip("."), port=port)
        return cls(network=ipaddress.ip_network(address), port=port)

    def allows(self, host: str, port: int, address: IPAddress) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            return self.host == host.lower().rstrip(".")
        assert self.network is not None
        return address in self.network


def parse_allow(entries: Iterable[str]) -> tuple[AllowRule, ...]:
    return tuple(AllowRule.parse(entry) for entry in entries)


def _port(raw: str, entry: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{entry!r}: {raw!r} is not a port")
    return int(raw)


def address_class(address: IPAddress) -> str | None:
    """Why ``address`` is not a public one (its kind), or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for kind, flagged in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local (cloud metadata services live there)", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if flagged:
            return kind
    if not address.is_global:
        return "not globally routable"
    return None


@dataclass(frozen=True)
class FetchPolicy:
    """What a fetch may reach, and how much it may take."""

    allow: tuple[AllowRule, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout: float = DEFAULT_TIMEOUT
    max_redirects: int = DEFAULT_MAX_REDIRECTS

    def refusal(self, host: str, port: int, address: IPAddress) -> str | None:
        """Why connecting to ``address`` for ``host:port`` is refused, or None."""
        if any(rule.allows(host, port, address) for rule in self.allow):
            return None
        kind = address_class(address)
        if kind is None:
            return None
        return (
            f"{host} resolves to a {kind} address, which the server does not fetch from "
            "(an operator may allow it with --allow-fetch)"
        )
