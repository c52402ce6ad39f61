"""A fault proxy for the Docker engine's unix socket: a hung or vanishing engine, on demand.

:class:`EngineProxy` listens on a socket of its own and passes every byte through to the
real engine, until the test says otherwise (from any thread):

- :meth:`EngineProxy.stall`: what a hung ``dockerd`` does. Connections are still accepted
  and requests read, but nothing reaches the engine and nothing comes back, on new and
  open connections alike (an event stream goes silent too).
- :meth:`EngineProxy.drop`: an engine going away. Every open connection is closed, and
  each new one is closed as soon as it is accepted.
- :meth:`EngineProxy.pass_`: the engine answers again. What a stall held is delivered, in
  order, as an engine that was stuck answers late; a connection its client gave up on
  meanwhile is closed without its request reaching the engine.

Each takes an optional ``only``, a regex searched in ``"METHOD /path"`` of the request
(``r"POST /v[\\d.]+/containers/[^/]+/stop"``, ``r"GET /v[\\d.]+/events"``): only the
connections whose latest request matches are affected, so a case can hang one kind of
call. Requests are found at the start of what the client sends (HTTP/1.1 keep-alive, one
request at a time, as aiohttp sends them).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

ENGINE_SOCKET = "/var/run/docker.sock"

_REQUEST = re.compile(rb"^([A-Z]+) (\S+) HTTP/1\.[01]\r\n")

Mode = Literal["pass", "stall", "drop"]


@dataclass(eq=False)
class _Connection:
    client: socket.socket
    upstream: socket.socket
    request: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    held_up: list[bytes] = field(default_factory=list)
    held_down: list[bytes] = field(default_factory=list)
    closed: bool = False
    pumps: int = 2

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.held_up.clear()
            self.held_down.clear()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class EngineProxy:
    """A unix-socket proxy in front of ``upstream`` that stalls or drops calls on command."""

    def __init__(self, path: Path, upstream: str = ENGINE_SOCKET) -> None:
        self.path = path
        self.upstream = upstream
        self.mode: Mode = "pass"
        self.only: re.Pattern[str] | None = None
        self.requests: list[str] = []
        """Every request line seen (``"METHOD /path"``), in order."""
        self.held = threading.Event()
        """Set once a request has been held by a stall (cleared by each new stall)."""
        self._lock = threading.Lock()
        self._connections: set[_Connection] = set()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(64)
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        """The ``DOCKER_HOST`` that reaches the engine through this proxy."""
        return f"unix://{self.path}"

    def stall(self, only: str | None = None) -> None:
        """Hang the engine (for requests matching ``only``, if given)."""
        self._set("stall", only)

    def drop(self, only: str | None = None) -> None:
        """Close the connections (matching ``only``) and every new one (that matches)."""
        self._set("drop", only)
        for conn in self._open():
            if self._affects(conn):
                conn.close()

    def pass_(self) -> None:
        """Answer again: deliver what the stall held; pass everything through from now on."""
        self._set("pass", None)
        for conn in self._open():
            with conn.lock:
                self._flush(conn)

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join(5)
        for conn in self._open():
            conn.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _set(self, mode: Mode, only: str | None) -> None:
        with self._lock:
            if mode == "stall":
                self.held.clear()
            self.mode = mode
            self.only = None if only is None else re.compile(only)

    def _open(self) -> list[_Connection]:
        with self._lock:
            return list(self._connections)

    def _affects(self, conn: _Connection) -> bool:
        # A connection not yet past its first request is hung by a stall of everything.
        only = self.only
        return only is None or (bool(conn.request) and only.search(conn.request) is not None)

    def _stalled(self, conn: _Connection) -> bool:
        return self.mode == "stall" and self._affects(conn)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "drop" and self.only is None:
                client.close()
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.upstream)
            except OSError:
                client.close()
                upstream.close()
                continue
            conn = _Connection(client, upstream)
            with self._lock:
                self._connections.add(conn)
            threading.Thread(target=self._pump, args=(conn, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(conn, False), daemon=True).start()

    def _pump(self, conn: _Connection, up: bool) -> None:
        source = conn.client if up else conn.upstream
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if up and (found := _REQUEST.match(data)):
                    conn.request = f"{found[1].decode()} {found[2].decode()}"
                    with self._lock:
                        self.requests.append(conn.request)
                    if self.mode == "drop" and self._affects(conn):
                        break
                with conn.lock:
                    if conn.closed:
                        break
                    if self._stalled(conn):
                        (conn.held_up if up else conn.held_down).append(data)
                        self.held.set()
                        continue
                    self._flush(conn)
                    (conn.upstream if up else conn.client).sendall(data)
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self._connections.discard(conn)
                conn.pumps -= 1
                last = conn.pumps == 0
            if last:
                conn.client.close()
                conn.upstream.close()

    def _flush(self, conn: _Connection) -> None:
        """Deliver what a stall held on ``conn`` (its lock held), oldest first."""
        if conn.closed or self._stalled(conn):
            return
        while conn.held_up:
            conn.upstream.sendall(conn.held_up.pop(0))
        while conn.held_down:
            conn.client.sendall(conn.held_down.pop(0))


@contextlib.contextmanager
def proxied(upstream: str = ENGINE_SOCKET) -> Iterator[EngineProxy]:
    """A proxy in front of the engine at ``upstream``, closed whatever happens."""
    # Not under tmp_path: a unix socket's path must fit in 108 bytes.
    where = Path(tempfile.mkdtemp(prefix="ru-proxy-"))
    proxy = EngineProxy(where / "engine.sock", upstream)
    try:
        yield proxy
    finally:
        proxy.close()
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def engine_proxy() -> Iterator[EngineProxy]:
    """A proxy in front of the engine; the tool reaches it through ``proxy.url`` as its
    DOCKER_HOST, while the test's own ``docker()`` calls still go straight to the engine."""
    with proxied() as proxy:
        yield proxy
