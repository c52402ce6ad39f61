"""The connections a process still holds on a port, read from the kernel.

Before blue is stopped (with the redirect in place, new connections already reach
green) the switch waits until blue's established connections are gone: requests in
flight finish and keep-alive connections are closed by the server's own idle
timeout (Node's ``keepAliveTimeout``, 5 s by default), instead of being cut by a
SIGTERM that the Brain answers with ``process.exit``. The count comes from
``/proc/<pid>/net/tcp`` and ``tcp6`` of blue's main process: its network namespace
(the host's on the host network, its own on a bridge), sockets whose *local* port
is the service's port in state ESTABLISHED. Green's sockets have green's port as
their local port (the redirect rewrites the destination), so they are not counted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from rolling_update._engine.model import Engine

ESTABLISHED = "01"
LISTEN = "0A"
# How often the connections are counted while they close.
_POLL = 0.05


def _rows(table: str) -> Iterator[tuple[int, str, str]]:
    """(local port, remote end, state) of each row of a ``/proc/net/tcp``-format table."""
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4:
            continue
        _, _, hex_port = fields[1].rpartition(":")
        try:
            yield int(hex_port, 16), fields[2], fields[3]
        except ValueError:
            continue


def parse_established(table: str, port: int, ignore: frozenset[str] = frozenset()) -> int:
    """How many rows of a ``/proc/net/tcp``-format ``table`` are established on ``port``,
    leaving out those whose remote end is in ``ignore`` (``ADDR:PORT`` as the table has it)."""
    return sum(
        1
        for local, remote, state in _rows(table)
        if local == port and state == ESTABLISHED and remote not in ignore
    )


def listening(port: int, *, proc: Path = Path("/proc")) -> bool:
    """Whether a socket in this process's network namespace listens on TCP ``port``
    (IPv4 or IPv6): on a bridge network, the engine's docker-proxy for a published port."""
    for name in ("tcp", "tcp6"):
        try:
            table = (proc / "self" / "net" / name).read_text()
        except OSError:
            continue
        if any(local == port and state == LISTEN for local, _, state in _rows(table)):
            return True
    return False


def own_endpoints(proc: Path = Path("/proc")) -> frozenset[str]:
    """The local ends (``ADDR:PORT``, as the tables have them) of this process's own TCP
    sockets: the tool's keep-alive connections to blue are not blue's clients."""
    inodes: set[str] = set()
    try:
        fds = list((proc / "self" / "fd").iterdir())
    except OSError:
        return frozenset()
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ends: set[str] = set()
    for name in ("tcp", "tcp6"):
        try:
            table = (proc / "self" / "net" / name).read_text()
        except OSError:
            continue
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                ends.add(fields[1])
    return frozenset(ends)


def established(
    pid: int, port: int, *, proc: Path = Path("/proc"), ignore: frozenset[str] = frozenset()
) -> int | None:
    """Established TCP connections (IPv4 and IPv6) with local ``port`` in the network
    namespace of process ``pid``, but for those from ``ignore``; ``None`` when the kernel's
    tables cannot be read (the process is gone, or runs on another host)."""
    total = 0
    read_any = False
    for name in ("tcp", "tcp6"):
        try:
            table = (proc / str(pid) / "net" / name).read_text()
        except OSError:
            continue
        read_any = True
        total += parse_established(table, port, ignore)
    return total if read_any else None


@dataclass
class Held:
    """The latest count of a wait for connections to close (``None``: not readable)."""

    count: int | None = None


async def until_closed(pid: int, port: int, held: Held, *, interval: float) -> None:
    """Poll until process ``pid`` holds no established connection on ``port`` (or its tables
    cannot be read); each count is kept in ``held``. The caller bounds it in time."""
    while True:  # bounded by the caller's deadline
        held.count = established(pid, port, ignore=own_endpoints())
        if not held.count:
            return
        await anyio.sleep(interval)


async def drained(
    engine: Engine, container_id: str, port: int, *, local: bool, limit: float
) -> tuple[float, int | None]:
    """Wait at most ``limit`` s until the container holds no established connection on
    ``port`` (its clients' requests finish, idle keep-alive connections close). Returns the
    seconds waited and the connections left. A container that does not run holds none: no
    wait. Another host's container cannot be counted (``None`` left): it gets the whole
    ``limit``, which is what a fixed drain did before the kernel was asked."""
    began, held = time.monotonic(), Held()
    if not local:
        await anyio.sleep(max(0.0, limit))
        return round(time.monotonic() - began, 3), None
    raw = await engine.inspect_raw(container_id)
    pid = int(((raw or {}).get("State") or {}).get("Pid") or 0)
    if not pid:
        return 0.0, 0
    with anyio.move_on_after(max(0.0, limit)):
        await until_closed(pid, port, held, interval=_POLL)
    return round(time.monotonic() - began, 3), held.count or 0
