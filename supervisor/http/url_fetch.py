"""Fetching a file input's URL on the server, under ``fetch_policy``, into a bounded cache.

The supervisor fetches, not the child: an app's SDK (whatever its version)
then only ever sees a local path, so no app can skip the policy by resolving
URLs itself. Each hop is resolved here, every address it resolves to is
checked, and the connection goes to the checked address (the name is kept for
the ``Host`` header and TLS), so a name that resolves differently the second
time (DNS rebinding) gains nothing. Redirects are followed by hand, each one
checked again. Every transport failure (refused, reset, timed out, no such
host) reads the same to the client, so fetches cannot map which ports are open.

Fetched files stay in a cache bounded by bytes, entries and age; a request
gets its own hard link to the cached file, so an eviction never takes a file
from under a running request. Files fetched for setup values are kept while
the server runs: the same URL must keep naming the same path, or every request
would set the app up again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import time
import urllib.parse
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx

from .fetch_policy import FetchPolicy, IPAddress
from .files import safe_filename

logger = logging.getLogger("supervisor.fetch")

DEFAULT_CACHE_BYTES = 4 * 2**30
DEFAULT_CACHE_ENTRIES = 1024
DEFAULT_CACHE_AGE = 3600.0
DEFAULT_PORTS = {"http": 80, "https": 443}
CHUNK = 1 << 16


class FetchError(Exception):
    """A fetch that did not happen; the message is safe to show the client."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        """``fetch_refused`` (the policy), ``fetch_too_large`` or ``fetch_failed``."""


@dataclass(frozen=True)
class Fetched:
    """A URL's body saved in the cache, with what is needed to reuse or evict it."""

    path: Path
    size: int
    content_type: str | None
    fetched_at: float
    pinned: bool = False


def unreachable(url: str) -> FetchError:
    """The one error for every transport failure, whatever the cause."""
    return FetchError(
        "fetch_failed",
        f"could not fetch {url}: no usable answer (unreachable, refused, reset or timed out)",
    )


class UrlFetcher:
    def __init__(
        self,
        policy: FetchPolicy,
        cache_dir: str | Path,
        *,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_age: float = DEFAULT_CACHE_AGE,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        """``verify``: the TLS context that checks servers (default: the system's CAs,
        or ``$SSL_CERT_FILE``/``$SSL_CERT_DIR``; the environment's proxies are not used)."""
        self.policy = policy
        self.cache_dir = Path(cache_dir)
        self.cache_bytes = cache_bytes
        self.cache_entries = cache_entries
        self.cache_age = cache_age
        self._cache: OrderedDict[str, Fetched] = OrderedDict()
        self._locks: dict[str, anyio.Lock] = {}
        self._client = httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            timeout=policy.timeout,
            verify=verify or _default_tls(),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    @property
    def cached_bytes(self) -> int:
        return sum(entry.size for entry in self._cache.values())

    def __len__(self) -> int:
        return len(self._cache)

    async def fetch(self, url: str, *, pin: bool = False) -> Fetched:
        """The cached file of ``url``, fetched first when missing or too old.

        ``pin`` keeps it in the cache for good (a setup value's file).
        """
        lock = self._locks.setdefault(url, anyio.Lock())
        try:
            async with lock:
                entry = self._cache.get(url)
                if entry is not None and (
                    entry.pinned or time.monotonic() - entry.fetched_at < self.cache_age
                ):
                    self._cache.move_to_end(url)
                    if pin and not entry.pinned:
                        entry = self._cache[url] = dataclasses.replace(entry, pinned=True)
                    return entry
                if entry is not None:
                    self._drop(url)
                entry = await self._download(url, pin)
                self._cache[url] = entry
                self._evict()
                return entry
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._locks.pop(url, None)

    def link_into(self, entry: Fetched, directory: Path) -> Path:
        """A request's own name for a cached file (a hard link, else a copy)."""
        target = directory / f"fetched-{entry.path.parent.name[:12]}-{entry.path.name}"
        if not target.exists():
            try:
                os.link(entry.path, target)
            except OSError:
                shutil.copyfile(entry.path, target)
        return target

    # -- the mechanism ------------------------------------------------------------

    async def _download(self, url: str, pin: bool) -> Fetched:
        try:
            with anyio.fail_after(self.policy.timeout):
                return await self._follow(url, pin)
        except TimeoutError:
            raise unreachable(url) from None

    async def _follow(self, url: str, pin: bool) -> Fetched:
        current = httpx.URL(url)
        for _ in range(self.policy.max_redirects + 1):
            if current.scheme not in DEFAULT_PORTS or not current.host:
                raise FetchError("fetch_refused", f"{url}: only http(s) URLs are fetched")
            host = current.host
            port = current.port or DEFAULT_PORTS[current.scheme]
            address = await self._checked_address(url, host, port)
            request = self._client.build_request(
                "GET",
                current.copy_with(host=str(address)),
                headers={"Host": current.netloc.decode("ascii")},
                extensions={"sni_hostname": host} if current.scheme == "https" else {},
            )
            try:
                response = await self._client.send(request, stream=True)
            except (httpx.TransportError, OSError):
                raise unreachable(url) from None
            try:
                if response.is_redirect:
                    current = current.join(response.headers["location"])
                    logger.debug("fetch %s: redirected to %s", url, current)
                    continue
                if response.status_code != 200:
                    raise FetchError(
                        "fetch_failed",
                        f"could not fetch {url}: the server answered {response.status_code}",
                    )
                return await self._save(url, current, response, pin)
            except (httpx.TransportError, OSError):
                raise unreachable(url) from None
            finally:
                await response.aclose()
        raise FetchError(
            "fetch_failed",
            f"could not fetch {url}: more than {self.policy.max_redirects} redirects",
        )

    async def _checked_address(self, url: str, host: str, port: int) -> IPAddress:
        """The address to connect to, after checking every address ``host`` has."""
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                raise unreachable(url) from None
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise unreachable(url)
        for address in addresses:
            refusal = self.policy.refusal(host, port, address)
            if refusal is not None:
                raise FetchError("fetch_refused", f"{url}: {refusal}")
        return addresses[0]

    async def _save(
        self, url: str, final: httpx.URL, response: httpx.Response, pin: bool
    ) -> Fetched:
        limit = self.policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(url, limit)
        name = safe_filename(urllib.parse.unquote(os.path.basename(final.path)), "download")
        directory = self.cache_dir / hashlib.sha256(url.encode()).hexdigest()[:32]
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / name
        partial = directory / f".{name}.partial"
        size = 0
        try:
            async with await anyio.open_file(partial, "wb") as out:
                async for chunk in response.aiter_bytes(CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(url, limit)
                    await out.write(chunk)
            os.replace(partial, target)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        content_type = response.headers.get("content-type", "").split(";")[0].strip() or None
        logger.info("fetched %s (%d bytes)", url, size)
        return Fetched(target, size, content_type, time.monotonic(), pin)

    def _evict(self) -> None:
        while len(self._cache) > self.cache_entries or self.cached_bytes > self.cache_bytes:
            victim = next((url for url, e in self._cache.items() if not e.pinned), None)
            if victim is None:
                return
            self._drop(victim)

    def _drop(self, url: str) -> None:
        entry = self._cache.pop(url)
        with contextlib.suppress(OSError):
            shutil.rmtree(entry.path.parent)


def _default_tls() -> ssl.SSLContext | bool:
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    if cafile or capath:
        return ssl.create_default_context(cafile=cafile, capath=capath)
    return True


def _too_large(url: str, limit: int) -> FetchError:
    return FetchError(
        "fetch_too_large", f"could not fetch {url}: larger than the server's limit of {limit} bytes"
    )
