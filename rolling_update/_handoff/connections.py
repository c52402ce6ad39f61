"""The connections a container still holds on a port, read from the kernel.

Before blue is stopped (with the redirect in place, new connections already reach
green) the switch waits until blue's established connections are gone: requests in
flight finish and keep-alive connections are closed by the server's own idle
timeout (Node's ``keepAliveTimeout``, 5 s by default), instead of being cut by a
SIGTERM that the Brain answers with ``process.exit``. The count comes from the
kernel's TCP tables (``/proc/net/tcp`` and ``tcp6``) of the container's network
namespace (the host's on the host network, its own on a bridge): sockets whose
*local* port is the service's port in state ESTABLISHED. Green's sockets have green's
port as their local port (the redirect rewrites the destination), so they are not
counted.

Where the tables are read depends on the host (:class:`Sockets`, which each firewall
is): on this machine, ``/proc/<pid>/net`` of the container's main process; on a
remote engine's host, a helper container that joins the container's network
namespace (``NetworkMode: container:<id>``) and prints its ``/proc/net/tcp{,6}``.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import anyio
import structlog

from rolling_update._engine.model import Engine
from rolling_update._errors import HandoffError
from rolling_update._handoff.helper import Helper

ESTABLISHED = "01"
LISTEN = "0A"
# The least pause between two counts. A count that takes long (a remote helper
# container, ~0.2 s; this host's tables when it holds tens of thousands of sockets,
# ~0.3 s) is followed by a pause twice as long: counting takes at most a third of the
# wait, and a remote host is asked about every 0.6 s.
_POLL = 0.05


class Sockets(Protocol):
    """Where a container's TCP sockets are read: this machine, or an engine's host."""

    async def tcp_tables(self, container_id: str, pid: int) -> str:
        """The kernel's TCP tables (``/proc/net/tcp`` then ``tcp6``) of the network namespace
        of the running container ``container_id``, whose main process is ``pid`` on its
        host. Raises :class:`HandoffError` when they cannot be read."""
        ...

    async def host_tables(self) -> str:
        """The same tables of the host's own network namespace."""
        ...


def endpoint(field: str) -> str | None:
    """``ADDR:PORT`` as the tables print it (hex, each 32-bit word in the host's byte order)
    as ``ip:port``, an IPv4-mapped IPv6 address as IPv4: a client that reached a dual-stack
    listener over IPv4 has the same endpoint as in its own IPv4 table. ``None``: not one."""
    hex_address, _, hex_port = field.rpartition(":")
    if len(hex_address) not in (8, 32):
        return None
    try:
        # The words are printed as the host stores them; a remote host is taken to share
        # this machine's byte order.
        packed = b"".join(
            int(hex_address[i : i + 8], 16).to_bytes(4, sys.byteorder)
            for i in range(0, len(hex_address), 8)
        )
        port = int(hex_port, 16)
    except ValueError:
        return None
    return _written(ipaddress.ip_address(packed), port)


def _written(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is None:
            return f"[{address}]:{port}"
        address = address.ipv4_mapped
    return f"{address}:{port}"


def _rows(tables: str, state: str) -> Iterator[tuple[int, str]]:
    """The local port and remote end (as printed) of each row of ``/proc/net/tcp``-format
    ``tables`` (one table or several one after the other) in ``state``; headers, other
    states and lines that are no row at all (an error message) are skipped."""
    for line in tables.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[3] != state:
            continue
        try:
            # The port only: a host's tables can hold tens of thousands of rows.
            yield int(fields[1].rpartition(":")[2], 16), fields[2]
        except ValueError:
            continue


def parse_established(table: str, port: int, ignore: frozenset[str] = frozenset()) -> int:
    """How many rows of ``/proc/net/tcp``-format ``table`` (one table or several one after
    the other) are established on local ``port``, leaving out those whose remote end is in
    ``ignore`` (``ip:port``, as :func:`endpoint` writes them)."""
    count = 0
    for local, remote in _rows(table, ESTABLISHED):
        end = endpoint(remote) if local == port else None
        if end is not None and end not in ignore:
            count += 1
    return count


def listening(tables: str, port: int) -> bool:
    """Whether a row of ``/proc/net/tcp``-format ``tables`` listens on ``port``: in the host's
    namespace, for a port published on a bridge network, the engine's docker-proxy."""
    return any(local == port for local, _ in _rows(tables, LISTEN))


def own_endpoints() -> frozenset[str]:
    """The local ends (``ip:port``) of this process's own TCP sockets: the tool's probes of
    blue are not blue's clients. Seen from a remote host they are the same where nothing
    translates addresses between (the remote host's redirect of the bypass port changes
    the destination, not the source); through an SSH forward they are not, and a probe
    under way then counts as one of blue's connections until it ends."""
    ends: set[str] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return frozenset()
    for fd in fds:
        # Asked of each socket itself, not looked up in the namespace's tables, which on a
        # busy host take a third of a second to read.
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:["):
                continue
            with socket.socket(fileno=os.dup(int(fd))) as sock:  # closes the copy only
                if sock.family not in (socket.AF_INET, socket.AF_INET6):
                    continue
                if sock.type != socket.SOCK_STREAM:
                    continue
                name = sock.getsockname()
        except OSError:
            continue  # closed meanwhile
        ends.add(_written(ipaddress.ip_address(name[0].partition("%")[0]), name[1]))
    return frozenset(ends)


def proc_tables(pid: int, proc: Path = Path("/proc")) -> str:
    """The TCP tables of the network namespace of process ``pid`` of this machine."""
    tables, why = [], ""
    for name in ("tcp", "tcp6"):
        try:
            tables.append((proc / str(pid) / "net" / name).read_text())
        except OSError as exc:
            # A kernel without IPv6 has no tcp6: one table read is enough.
            why = exc.strerror or str(exc)
    if not tables:
        raise HandoffError(f"cannot read /proc/{pid}/net/tcp: {why}")
    return "".join(tables)


async def helper_tables(helper: Helper, network: str) -> str:
    """The TCP tables of a network namespace on ``helper``'s host (``host``, or
    ``container:<id>``), printed by a helper container that joins it (no capability,
    nothing published)."""
    code, output = await helper.run("cat", "/proc/net/tcp", "/proc/net/tcp6", network=network)
    # cat fails on a kernel without IPv6 (no tcp6), after printing tcp.
    if code != 0 and "local_address" not in output:
        raise HandoffError(f"cat failed on the engine's host: {output.strip()}")
    return output


@dataclass
class Held:
    """The first and the latest count of a wait for connections to close (``None``: not
    counted yet)."""

    first: int | None = None
    count: int | None = None


class Drained(NamedTuple):
    """How a wait for a container's connections to close ended."""

    seconds: float
    """How long it waited."""
    left: int | None
    """Connections still held at its end (``None``: they could not be counted)."""
    at_start: int | None
    """Connections held when it began: requests in flight it let finish."""


async def until_closed(
    firewall: Sockets, container_id: str, pid: int, port: int, held: Held
) -> None:
    """Count until the container holds no established connection on ``port``; each count is
    kept in ``held``. The caller bounds it in time; :class:`HandoffError` when a count
    cannot be made."""
    while True:  # bounded by the caller's deadline
        began = time.monotonic()
        tables = await firewall.tcp_tables(container_id, pid)
        held.count = parse_established(tables, port, own_endpoints())
        if held.first is None:
            held.first = held.count
        if not held.count:
            return
        await anyio.sleep(max(_POLL, 2 * (time.monotonic() - began)))


async def drained(
    engine: Engine, container_id: str, port: int, *, firewall: Sockets, limit: float
) -> Drained:
    """Wait at most ``limit`` s until the container holds no established connection on
    ``port`` (its clients' requests finish, idle keep-alive connections close), counted on
    the host ``firewall`` is for. A container that does not run holds none: no wait. Where
    its connections cannot be counted (a helper cannot run there) it gets the whole
    ``limit``, said in the log, and ``None`` is left. A count under way when the limit
    passes is let finish (a helper container, ~0.2 s, is not left behind)."""
    began = time.monotonic()
    raw = await engine.inspect_raw(container_id)
    state = (raw or {}).get("State") or {}
    if not state.get("Running"):
        return Drained(0.0, 0, 0)
    held = Held()
    try:
        with anyio.move_on_after(max(0.0, limit)):
            await until_closed(firewall, container_id, int(state.get("Pid") or 0), port, held)
    except HandoffError as exc:
        info = await engine.inspect(container_id)
        if info is None or not info.running:
            return Drained(round(time.monotonic() - began, 3), 0, held.first)
        structlog.get_logger().warning(
            "handoff.connections_uncounted",
            container=container_id[:12],
            why=str(exc),
            consequence=f"the whole {limit:g}s is waited",
        )
        await anyio.sleep(max(0.0, limit - (time.monotonic() - began)))
        return Drained(round(time.monotonic() - began, 3), None, held.first)
    return Drained(round(time.monotonic() - began, 3), held.count or 0, held.first)
