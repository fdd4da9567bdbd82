"""HTTP load generator, run in its own process: `python -m bench.loadgen CONFIG.json OUT.json`.

Raw HTTP/1.1 over non-blocking sockets and one epoll loop (no HTTP library, no asyncio: both cost several times
more CPU per request, and on a 2-core machine the generator's CPU is taken from the service it measures).
`concurrency` requests are in flight at once (closed loop); a connection is kept alive when the server allows
it, and opened anew when the server answers `Connection: close`.
Bodies are pre-built templates; per request the only work is one bytes.replace of the request number. No
Django import, so the process stays small.

Config keys: host, port, path, api_key, templates (latin-1 strings), concurrency, start_at (wall time),
stop_at (wall time, or null), max_requests (or null), first_request, rate (requests/s, or null),
content_encoding ("gzip" or null: each rendered body is compressed before it is sent, at the generator's CPU,
as a producer compressing its own requests would).

With a rate, request n is due at start_at + n / rate (open loop, as far as `concurrency` allows) and its
latency counts from when it was due, not from when a free connection sent it (no coordinated omission).

Output: {"requests": [[n, t_send, t_done, status, accepted], ...], "cpu_seconds", "wall_seconds", "errors",
"new_connections", "late_requests"}.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import selectors
import socket
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from bench.events import render

_ACCEPTED = re.compile(rb'"accepted":(\d+)')
_SINGLE_ACCEPTED = b'"status":"accepted"'
_TIMEOUT = 60.0  # a request without an answer for this long is given up as an error


class Conn:
    __slots__ = ("body_at", "close", "deadline", "inbuf", "length", "n", "out", "reused", "sock", "status", "t_send")

    def __init__(self, sock: socket.socket, reused: bool) -> None:
        self.sock = sock
        self.reused = reused
        self.out = memoryview(b"")
        self.inbuf = bytearray()
        self.n = -1
        self.t_send = 0.0
        self.deadline = 0.0
        self.status = 0
        self.length = -1
        self.body_at = -1
        self.close = False


class LoadGenerator:
    def __init__(self, config: dict[str, Any]) -> None:
        self.address = (config["host"], int(config["port"]))
        self.templates = [t.encode("latin-1") for t in config["templates"]]
        self.concurrency = int(config["concurrency"])
        self.start_at = float(config.get("start_at") or time.time())
        self.stop_at = config.get("stop_at")
        self.first_request = int(config.get("first_request", 0))
        self.next_request = self.first_request
        max_requests = config.get("max_requests")
        self.last_request = None if max_requests is None else self.first_request + int(max_requests)
        self.rate = float(config["rate"]) if config.get("rate") else None
        self.gzip = config.get("content_encoding") == "gzip"
        self.head = (
            f"POST {config['path']} HTTP/1.1\r\nHost: {self.address[0]}:{self.address[1]}\r\n"
            f"Authorization: Api-Key {config['api_key']}\r\nContent-Type: application/json\r\n"
            + ("Content-Encoding: gzip\r\n" if self.gzip else "")
            + "Connection: keep-alive\r\nContent-Length: "
        ).encode()
        self.results: list[tuple[int, float, float, int, int]] = []
        self.errors: dict[str, int] = {}
        self.new_connections = 0
        self.late = 0
        self.selector = selectors.EpollSelector()
        self.idle: list[socket.socket] = []  # kept-alive connections
        self.in_flight = 0
        self.retry: list[tuple[int, float]] = []  # requests whose kept-alive connection was closed under them

    # ------------------------------------------------------------------ requests

    def _due(self, n: int) -> float:
        return self.start_at + (n - self.first_request) / self.rate if self.rate else self.start_at

    def _more(self, now: float) -> bool:
        if self.stop_at is not None and now >= self.stop_at:
            return False
        return self.last_request is None or self.next_request < self.last_request

    def _start(self, n: int, t_send: float) -> None:
        body = render(self.templates[n % len(self.templates)], n)
        if self.gzip:
            body = gzip.compress(body, mtime=0)
        request = self.head + b"%d\r\n\r\n" % len(body) + body
        if self.idle:
            conn = Conn(self.idle.pop(), reused=True)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            code = sock.connect_ex(self.address)
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                self._fail(n, t_send, f"connect:{errno.errorcode.get(code, code)}")
                return
            self.new_connections += 1
            conn = Conn(sock, reused=False)
        conn.n, conn.t_send, conn.out = n, t_send, memoryview(request)
        conn.deadline = time.time() + _TIMEOUT
        self.selector.register(conn.sock, selectors.EVENT_WRITE, conn)
        self.in_flight += 1

    def _fail(self, n: int, t_send: float, reason: str) -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1
        self.results.append((n, t_send, time.time(), 0, 0))

    def _finish(self, conn: Conn, keep: bool) -> None:
        self.selector.unregister(conn.sock)
        self.in_flight -= 1
        if keep:
            self.idle.append(conn.sock)
        else:
            conn.sock.close()

    # ------------------------------------------------------------------ socket events

    def _on_write(self, conn: Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._broken(conn, type(exc).__name__)
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            self.selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def _on_read(self, conn: Conn) -> None:
        try:
            chunk = conn.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as exc:
            self._broken(conn, type(exc).__name__)
            return
        buf = conn.inbuf
        if not chunk:
            if conn.body_at >= 0 and conn.length < 0:  # a body delimited by the end of the connection
                self._complete(conn, bytes(buf[conn.body_at :]))
            else:
                self._broken(conn, "closed before the answer")
            return
        buf += chunk
        if conn.body_at < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            conn.body_at = end + 4
            conn.status = int(buf[9:12])
            for line in bytes(buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    conn.length = int(value)
                elif name == b"connection":
                    conn.close = value.strip().lower() == b"close"
            if conn.length < 0:  # no length: the body ends with the connection (chunked is never sent here)
                conn.close = True
                return
        if len(buf) - conn.body_at < conn.length:
            return
        self._complete(conn, bytes(buf[conn.body_at : conn.body_at + conn.length]))

    def _complete(self, conn: Conn, body: bytes) -> None:
        accepted = 0
        if conn.status == 202:
            if body.startswith(b'{"accepted"') or b'"accepted":' in body[:40]:
                match = _ACCEPTED.search(body)
                accepted = int(match.group(1)) if match else 0
            else:
                accepted = 1 if _SINGLE_ACCEPTED in body else 0
        self.results.append((conn.n, conn.t_send, time.time(), conn.status, accepted))
        self._finish(conn, keep=not conn.close)

    def _broken(self, conn: Conn, reason: str) -> None:
        self._finish(conn, keep=False)
        if conn.reused and not conn.inbuf:
            # A kept-alive connection the server had closed: send the same request on a new one.
            self.retry.append((conn.n, conn.t_send))
        else:
            self._fail(conn.n, conn.t_send, reason)

    # ------------------------------------------------------------------ loop

    def run(self) -> None:
        while time.time() < self.start_at:
            time.sleep(min(0.05, self.start_at - time.time()))
        while True:
            now = time.time()
            while self.retry and self.in_flight < self.concurrency:
                self._start(*self.retry.pop())
            while self.in_flight < self.concurrency and self._more(now):
                n = self.next_request
                due = self._due(n)
                if due > now:
                    break
                if self.rate is not None and now - due > 0.001:
                    self.late += 1
                self.next_request += 1
                self._start(n, due if self.rate is not None else now)
            if self.in_flight == 0 and not self.retry and not self._more(now):
                break
            timeout = 0.05
            if self.rate is not None and self.in_flight < self.concurrency and self._more(now):
                timeout = max(0.0, min(timeout, self._due(self.next_request) - now))
            for key, mask in self.selector.select(timeout):
                conn: Conn = key.data
                if mask & selectors.EVENT_WRITE:
                    self._on_write(conn)
                elif mask & selectors.EVENT_READ:
                    self._on_read(conn)
            if now > 0 and int(now) != int(time.time()):  # once a second: give up on hung requests
                self._expire(time.time())
        for sock in self.idle:
            sock.close()

    def _expire(self, now: float) -> None:
        for key in list(self.selector.get_map().values()):
            conn: Conn = key.data
            if now > conn.deadline:
                self._finish(conn, keep=False)
                self._fail(conn.n, conn.t_send, "timeout")


def main() -> None:
    config_path, out_path = sys.argv[1], sys.argv[2]
    config: dict[str, Any] = orjson.loads(Path(config_path).read_bytes())
    generator = LoadGenerator(config)
    cpu0, wall0 = sum(os.times()[:2]), time.time()
    generator.run()
    cpu1, wall1 = sum(os.times()[:2]), time.time()
    out = {
        "requests": generator.results,
        "cpu_seconds": cpu1 - cpu0,
        "wall_seconds": wall1 - max(wall0, generator.start_at),
        "errors": generator.errors,
        "new_connections": generator.new_connections,
        "late_requests": generator.late,
    }
    Path(out_path).write_bytes(orjson.dumps(out))


if __name__ == "__main__":
    main()
