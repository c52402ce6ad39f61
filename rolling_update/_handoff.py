"""The kernel handoff: production's port is moved to green by nftables, not by a proxy.

While blue is replaced, a ``nat`` table of the tool's own (``inet
rolling_update_<service>``) redirects *new* TCP connections for the production
port to green's port, for local clients (``output``) and remote ones
(``prerouting``), IPv4 and IPv6. Connections already established stay where
they are (conntrack keeps their translation). Every change is one atomic
``nft -f`` transaction.

The tool's own HTTP traffic (probes of blue's tick, blue's drain, the
verification of the new production container) must reach the real
production port, not green: its sockets carry a firewall mark (``SO_MARK``,
which needs CAP_NET_ADMIN like the table itself) and the table lets marked
packets through untouched.

Why the ``nft`` CLI: it is on every machine with nftables, its ``-f`` file is
applied as one transaction, and it adds no Python dependency; the libnftables
bindings are a distribution package, not a PyPI one, and pyroute2's nftables
support does not cover NAT statements.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from typing import Any

import anyio

from ._errors import RollingUpdateError

MARK = 0x52550001
"""Firewall mark of the tool's own sockets: the redirect leaves them alone."""
_NFT_LIMIT = 10.0
_SO_MARK = getattr(socket, "SO_MARK", 36)


class HandoffError(RollingUpdateError):
    """An nftables change of the handoff failed."""


def table_name(service: str) -> str:
    return "rolling_update_" + re.sub(r"[^A-Za-z0-9_]", "_", service)


def marked_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """An aiohttp socket factory: a TCP socket carrying :data:`MARK`."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family=family, type=kind, proto=proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_MARK, MARK)
    except BaseException:
        sock.close()
        raise
    return sock


def can_mark() -> bool:
    try:
        marked_socket((socket.AF_INET, socket.SOCK_STREAM, 0, "", ())).close()
    except OSError:
        return False
    return True


async def _nft(script: str | None, *args: str) -> str:
    nft = shutil.which("nft") or "nft"
    argv = [nft, *args] if script is None else [nft, "-f", "-"]
    try:
        with anyio.fail_after(_NFT_LIMIT, shield=True):
            result = await anyio.run_process(
                argv, input=None if script is None else script.encode(), check=False
            )
    except TimeoutError:
        raise HandoffError(f"nft did not answer within {_NFT_LIMIT:g}s") from None
    except OSError as exc:
        raise HandoffError(f"cannot run nft: {exc.strerror}") from None
    if result.returncode != 0:
        raise HandoffError(f"nft failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode(errors="replace")


async def unavailable() -> str | None:
    """Why the handoff cannot be used here, or ``None`` when it can."""
    if shutil.which("nft") is None:
        return "the nft command (nftables) is not installed"
    if os.geteuid() != 0 and not can_mark():
        return "it needs root or CAP_NET_ADMIN"
    try:
        await _nft(None, "list", "tables")
    except HandoffError as exc:
        return f"nftables is not usable: {exc}"
    if not can_mark():
        return "the tool's sockets cannot carry a firewall mark (SO_MARK)"
    return None


def _ruleset(table: str, port: int, to_port: int) -> str:
    chains = "".join(
        f"""
    chain {hook} {{
        type nat hook {hook} priority -100; policy accept;
        meta mark {MARK:#x} return
        fib daddr type local tcp dport {port} redirect to :{to_port}
    }}"""
        for hook in ("output", "prerouting")
    )
    return f"table inet {table} {{{chains}\n}}\n"


async def redirect(table: str, port: int, to_port: int) -> None:
    """Send new connections for ``port`` to ``to_port``, replacing any rule before (atomic)."""
    # Declaring the table first makes the delete valid whether it existed or not.
    await _nft(f"table inet {table}\ndelete table inet {table}\n{_ruleset(table, port, to_port)}")


async def remove(table: str) -> None:
    """Drop the redirect, if there is one (atomic, idempotent)."""
    await _nft(f"table inet {table}\ndelete table inet {table}\n")


async def target(table: str) -> int | None:
    """The port the table redirects to, or ``None`` when there is no table."""
    try:
        text = await _nft(None, "list", "table", "inet", table)
    except HandoffError:
        return None
    found = re.search(r"redirect to :(\d+)", text)
    return int(found.group(1)) if found else None
