"""Fetching file URLs: the address policy alone, then real fetches from a loopback server."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "http"))
from fetch_server import FetchServer, fetch_server

from supervisor.http.fetch_policy import AllowRule, FetchPolicy, address_class, parse_allow
from supervisor.http.url_fetch import FetchError, UrlFetcher

# -- the policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.9.9.9",
        "::1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",
        "0.0.0.0",
        "::",
        "224.0.0.1",
        "ff02::1",
        "100.64.0.1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
    ],
)
def test_non_public_addresses_are_refused_by_default(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert address_class(ip) is not None
    refusal = FetchPolicy().refusal("host.example", 80, ip)
    assert refusal is not None and "--allow-fetch" in refusal


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "151.101.1.1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert FetchPolicy().refusal("host.example", 443, ipaddress.ip_address(address)) is None


def test_allow_rules_by_name_network_and_port() -> None:
    policy = FetchPolicy(parse_allow(["models.internal", "10.0.0.0/8", "127.0.0.1:8080"]))
    loopback, private = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.2.3.4")
    assert policy.refusal("MODELS.internal.", 9000, private) is None
    assert policy.refusal("other", 80, private) is None
    assert policy.refusal("other", 8080, loopback) is None
    assert policy.refusal("other", 8081, loopback) is not None
    assert policy.refusal("other", 80, ipaddress.ip_address("192.168.0.1")) is not None
    assert AllowRule.parse("[::1]:8000") == AllowRule(
        network=ipaddress.ip_network("::1/128"), port=8000
    )
    for bad in ["", "host:99999", "a b", "[::1]x"]:
        with pytest.raises(ValueError):
            AllowRule.parse(bad)


# -- real fetches ---------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FetchServer]:
    with fetch_server() as started:
        yield started


@pytest.fixture
def other() -> Iterator[FetchServer]:
    with fetch_server() as started:
        yield started


def _fetch(fetcher: UrlFetcher, url: str, **kw: bool) -> Path:
    async def go() -> Path:
        try:
            return (await fetcher.fetch(url, **kw)).path
        finally:
            await fetcher.aclose()

    return anyio.run(go)


def _error(fetcher: UrlFetcher, url: str) -> FetchError:
    with pytest.raises(FetchError) as caught:
        _fetch(fetcher, url)
    return caught.value


def test_loopback_is_refused_without_connecting(server: FetchServer, tmp_path: Path) -> None:
    for url in [f"{server.url}/file/a", f"http://localhost:{server.port}/file/a"]:
        error = _error(UrlFetcher(FetchPolicy(), tmp_path), url)
        assert error.kind == "fetch_refused", error
        assert "loopback" in str(error)
    assert server.hits["/file/a"] == 0


def test_an_allowed_server_is_fetched_once_and_cached(server: FetchServer, tmp_path: Path) -> None:
    fetcher = UrlFetcher(FetchPolicy(parse_allow([f"127.0.0.1:{server.port}"])), tmp_path)

    async def twice() -> tuple[Path, Path]:
        try:
            first = await fetcher.fetch(f"{server.url}/file/a.txt")
            second = await fetcher.fetch(f"{server.url}/file/a.txt")
            return first.path, second.path
        finally:
            await fetcher.aclose()

    first, second = anyio.run(twice)
    assert first == second and first.name == "a.txt"
    assert first.read_text() == "content of a.txt"
    assert server.hits["/file/a.txt"] == 1


def test_a_redirect_to_another_loopback_port_is_refused(
    server: FetchServer, other: FetchServer, tmp_path: Path
) -> None:
    fetcher = UrlFetcher(FetchPolicy(parse_allow([f"127.0.0.1:{server.port}"])), tmp_path)
    error = _error(fetcher, f"{server.url}/redirect?to={other.url}/file/secret")
    assert error.kind == "fetch_refused", error
    assert server.hits["/redirect"] == 1
    assert other.hits["/file/secret"] == 0
    fetcher = UrlFetcher(FetchPolicy(parse_allow([f"127.0.0.1:{server.port}"])), tmp_path)
    to_file = _error(fetcher, f"{server.url}/redirect?to=file:///etc/passwd")
    assert to_file.kind == "fetch_refused" and "only http(s)" in str(to_file)


def test_redirects_within_the_allowed_server_are_followed(
    server: FetchServer, tmp_path: Path
) -> None:
    fetcher = UrlFetcher(FetchPolicy(parse_allow([f"127.0.0.1:{server.port}"])), tmp_path)
    path = _fetch(fetcher, f"{server.url}/redirect?to=/file/b.txt")
    assert path.read_text() == "content of b.txt"
    loop = UrlFetcher(FetchPolicy(parse_allow(["127.0.0.1"]), max_redirects=2), tmp_path)
    error = _error(loop, f"{server.url}/redirect?to=/redirect%3Fto%3D/redirect%3Fto%3D/file/c")
    assert "redirects" in str(error)


def test_the_size_limit_holds_without_a_content_length(server: FetchServer, tmp_path: Path) -> None:
    policy = FetchPolicy(parse_allow(["127.0.0.1"]), max_bytes=1000)
    error = _error(UrlFetcher(policy, tmp_path / "cache"), f"{server.url}/big?n=5000")
    assert error.kind == "fetch_too_large"
    assert not any((tmp_path / "cache").rglob("*.partial"))
    assert (
        _fetch(UrlFetcher(policy, tmp_path / "cache"), f"{server.url}/big?n=1000").stat().st_size
        == 1000
    )


def test_refused_reset_and_timed_out_read_the_same(server: FetchServer, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    policy = FetchPolicy(parse_allow(["127.0.0.0/8"]), timeout=1.0)
    urls = [
        f"http://127.0.0.1:{closed_port}/x",
        f"{server.url}/reset",
        f"{server.url}/hang?s=3",
    ]
    messages = {str(_error(UrlFetcher(policy, tmp_path), url)).replace(url, "URL") for url in urls}
    assert len(messages) == 1, messages
    assert server.hits["/reset"] == 1 and server.hits["/hang"] == 1


def test_the_cache_is_bounded_and_pinned_entries_stay(server: FetchServer, tmp_path: Path) -> None:
    fetcher = UrlFetcher(FetchPolicy(parse_allow(["127.0.0.1"])), tmp_path, cache_entries=2)

    async def fill() -> list[Path]:
        try:
            pinned = await fetcher.fetch(f"{server.url}/file/setup", pin=True)
            paths = [pinned.path]
            for name in "abc":
                paths.append((await fetcher.fetch(f"{server.url}/file/{name}")).path)
            return paths
        finally:
            await fetcher.aclose()

    pinned, a, b, c = anyio.run(fill)
    assert len(fetcher) == 2
    assert pinned.exists() and c.exists()
    assert not a.exists() and not b.exists()


def _resolving(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]]) -> None:
    """Make ``anyio.getaddrinfo`` answer ``names`` (host -> addresses) and nothing else."""
    import socket

    async def getaddrinfo(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in names[host]
        ]

    monkeypatch.setattr(anyio, "getaddrinfo", getaddrinfo)


def test_every_address_of_a_name_is_checked(
    server: FetchServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _resolving(monkeypatch, {"mixed.test": ["93.184.216.34", "10.0.0.7"]})
    error = _error(UrlFetcher(FetchPolicy(), tmp_path), "http://mixed.test/x")
    assert error.kind == "fetch_refused" and "private" in str(error)


def test_the_connection_goes_to_the_checked_address_with_the_name_as_host(
    server: FetchServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rebind.test`` exists only in the patched resolver: had the client resolved the
    name again (where a rebinding DNS server could answer differently), it would fail."""
    _resolving(monkeypatch, {"rebind.test": ["127.0.0.1"]})
    seen: list[str] = []
    original = server.RequestHandlerClass.do_GET  # type: ignore[attr-defined]

    def record(handler: object) -> None:
        seen.append(handler.headers["Host"])  # type: ignore[attr-defined]
        original(handler)

    monkeypatch.setattr(server.RequestHandlerClass, "do_GET", record)
    fetcher = UrlFetcher(FetchPolicy(parse_allow([f"rebind.test:{server.port}"])), tmp_path)
    path = _fetch(fetcher, f"http://rebind.test:{server.port}/file/r.txt")
    assert path.read_text() == "content of r.txt"
    assert seen == [f"rebind.test:{server.port}"]


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    names = ["-subj", "/CN=tls.test", "-addext", "subjectAltName=DNS:tls.test"]
    subprocess.run(
        [*request, "-keyout", str(key), "-out", str(cert), *names],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_https_is_verified_against_the_name_while_connecting_to_the_checked_address(
    tls_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ssl

    cert, key = tls_files
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))
    _resolving(monkeypatch, {"tls.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    with fetch_server(server_tls) as tls_server:
        port = tls_server.port
        policy = FetchPolicy(parse_allow([f"tls.test:{port}", f"other.test:{port}"]))
        fetcher = UrlFetcher(policy, tmp_path / "a", verify=client_tls)
        path = _fetch(fetcher, f"https://tls.test:{port}/file/t.txt")
        assert path.read_text() == "content of t.txt"
        assert tls_server.sni == ["tls.test"]
        mismatch = UrlFetcher(policy, tmp_path / "b", verify=client_tls)
        error = _error(mismatch, f"https://other.test:{port}/file/t.txt")
        assert error.kind == "fetch_failed"
        assert tls_server.hits["/file/t.txt"] == 1
