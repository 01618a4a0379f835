"""A small HTTP server on loopback for the fetch tests, in a thread, counting its hits.

``/file/NAME`` answers ``content of NAME``; ``/redirect?to=URL`` a 302 to URL;
``/big?n=N`` N bytes without a Content-Length; ``/reset`` closes the connection
without an answer; ``/hang`` answers nothing for a while.
"""

from __future__ import annotations

import collections
import contextlib
import socket
import ssl
import struct
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    server: FetchServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.server.hits[url.path] += 1
        if url.path.startswith("/file/"):
            body = f"content of {url.path.removeprefix('/file/')}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/big":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"x" * int(query["n"]))
            self.close_connection = True
        elif url.path == "/reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
        elif url.path == "/hang":
            time.sleep(float(query.get("s", "3")))
            self.close_connection = True
        else:
            self.send_error(404)


class FetchServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: collections.Counter[str] = collections.Counter()
        self.sni: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextlib.contextmanager
def fetch_server(tls: ssl.SSLContext | None = None) -> Iterator[FetchServer]:
    """The server in a thread; with ``tls``, it speaks HTTPS and records the SNI names."""
    server = FetchServer()
    if tls is not None:
        tls.sni_callback = lambda _sock, name, _ctx: server.sni.append(name)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
