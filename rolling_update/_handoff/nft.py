"""The kernel handoff: production's port is moved to green by nftables, not by a proxy.

While blue is replaced, a ``nat`` table of the tool's own (``inet
rolling_update_<service>``) redirects *new* TCP connections for the production
port to green's port, for local clients (``output``) and remote ones
(``prerouting``), IPv4 and IPv6. On a bridge network the ports are the host's
published ones: the redirect reaches green's through the engine's listener for
it (docker-proxy), and Docker's own chains are left alone. Connections already
established stay where they are (conntrack keeps their translation). Every
change is one atomic ``nft -f`` transaction.

That holds only while conntrack follows a flow from before the redirect goes in
until after it is gone, and the kernel tracks a family only while some rule needs
it. IPv4 flows are tracked on a Docker host (Docker's rules use conntrack); IPv6
ones were tracked only while the redirect table existed: a flow opened before it was
taken up mid-stream as a new one and redirected (reset), one redirected to green
lost its translation when the table went (reset). So the redirect takes only an
IPv6 connection's first packet, and :data:`TRACK_TABLE`, which the tool adds with every
redirect and never removes, keeps conntrack and the NAT hooks running for both
families between handoffs (README, "What clients see").

The tool's own HTTP traffic (probes of blue's tick, blue's drain, the
verification of the new production container) must reach the real
production port, not green: its sockets carry a firewall mark (``SO_MARK``,
which needs CAP_NET_ADMIN like the table itself) and the table lets marked
packets through untouched.

On a remote Docker host (several hosts, see ``_hosts``) the tool has no shell:
:class:`EngineFirewall` applies the same rules through the engine API, in a
short-lived helper container on the host's network with only CAP_NET_ADMIN,
that runs the host's own ``nft`` (its root mounted read-only, ``chroot``).
Firewall marks do not cross the network, so there the tool's probes bypass the
redirect by a second port instead: while the table exists, connections to
``bypass_port`` reach the real production port.

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
from dataclasses import dataclass
from typing import Any, Protocol

import anyio

from rolling_update._config.settings import bad_share
from rolling_update._engine.model import Engine
from rolling_update._errors import HandoffError, HelperNotRun
from rolling_update._handoff import conntrack
from rolling_update._handoff.connections import Sockets, helper_tables, proc_tables
from rolling_update._handoff.helper import Helper

MARK = 0x52550001
"""Firewall mark of the tool's own sockets: the redirect leaves them alone."""
_NFT_LIMIT = 10.0
# Before Docker's own nat chains (dstnat, -100): for a service publishing its port
# on a bridge network, a connection's first nat rule wins, so a new connection to
# production's host port meets the redirect to green's published port before
# Docker's DNAT to blue; on the host network Docker has no rule for these ports.
_PRIORITY = -110
TRACK_TABLE = "rolling-update-conntrack"
"""The persistent table (family ``inet``) that keeps conntrack and NAT running between
handoffs; a service's table name (:func:`table_name`) never has a ``-``, so never this."""
_FIRST_PACKET = "tcp flags & (syn | ack) == syn"
"""A connection's first packet: an IPv6 flow conntrack takes up mid-stream (one opened
before :data:`TRACK_TABLE` existed) is not redirected. IPv6 only: on IPv4, always tracked
on a Docker host, the same match made clients on a bridge reaching the host's address
see resets and lost SYNs (283 of 364 requests failed with it, 0 of 484 without)."""
_SO_MARK = getattr(socket, "SO_MARK", 36)
_RULE = re.compile(r"dport (\d+) (?:numgen random mod 100 < (\d+) )?redirect to :(\d+)")
"""A redirect rule as nft lists it: the port, a share's draw if any, and the target port."""


@dataclass(frozen=True)
class RedirectRule:
    """A redirect read back from a table: where new connections go, and what share of them
    (below 100 while a gradual shift holds a step, or since one was cut short)."""

    to_port: int
    share: int = 100


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


def _share(share: int) -> str:
    # NAT chains see only a connection's first packet: the draw decides once, and the
    # connection stays on the side it fell on for its whole life.
    # Checked again here: a custom step may call to_green(share) with any number.
    if why := bad_share(share):
        raise HandoffError(f"the redirect's share: {why}")
    return "" if share == 100 else f"numgen random mod 100 < {share} "


def _ruleset(
    table: str, port: int, to_port: int, bypass_port: int | None = None, share: int = 100
) -> str:
    # A connection is translated once, by the first rule it meets: one that came in
    # on the bypass port reaches the real port and is not redirected again.
    draw = _share(share)
    bypass = (
        ""
        if bypass_port is None
        else f"\n        fib daddr type local tcp dport {bypass_port} redirect to :{port}"
    )
    chains = "".join(
        f"""
    chain {hook} {{
        type nat hook {hook} priority {_PRIORITY}; policy accept;
        meta mark {MARK:#x} return{bypass}
        meta nfproto ipv4 fib daddr type local tcp dport {port} {draw}redirect to :{to_port}
        meta nfproto ipv6 fib daddr type local {_FIRST_PACKET} tcp dport {port} \
{draw}redirect to :{to_port}
    }}"""
        for hook in ("output", "prerouting")
    )
    return f"table inet {table} {{{chains}\n}}\n"


def _tracking() -> str:
    # The ct rule holds conntrack on for both families, the (empty) nat chain the
    # NAT hooks that keep established translations. Adding is idempotent; the
    # flush keeps the one rule however often this runs.
    return (
        f"add table inet {TRACK_TABLE}\n"
        f"add chain inet {TRACK_TABLE} keep "
        "{ type nat hook output priority 100; policy accept; }\n"
        f"flush chain inet {TRACK_TABLE} keep\n"
        f"add rule inet {TRACK_TABLE} keep ct state new\n"
    )


def _redirect_script(
    table: str, port: int, to_port: int, bypass_port: int | None, share: int = 100
) -> str:
    # The tracking comes with the redirect, in its transaction: every handoff
    # (deploy, rollback, recover, on any host) installs it before its first flow moves.
    return _replace(table, _ruleset(table, port, to_port, bypass_port, share)) + _tracking()


def _replace(table: str, ruleset: str) -> str:
    # Declaring the table first makes the delete valid whether it existed or not.
    return f"table inet {table}\ndelete table inet {table}\n{ruleset}"


def _target_in(text: str, port: int | None = None) -> RedirectRule | None:
    # Without a port: the last rule's, the redirect itself (a bypass rule comes first).
    targets = {
        int(found.group(1)): RedirectRule(int(found.group(3)), int(found.group(2) or 100))
        for found in _RULE.finditer(text)
    }
    if port is not None:
        return targets.get(port)
    return list(targets.values())[-1] if targets else None


class Firewall(Sockets, Protocol):
    """Where the handoff's nftables table lives: this host, or a remote engine's host; and
    how the connections of a container there are read (:meth:`tcp_tables`)."""

    bypass_port: int | None
    """Port the tool probes production through while redirected; None: marked sockets."""

    async def unavailable(self) -> str | None: ...
    async def redirect(self, table: str, port: int, to_port: int, share: int = 100) -> None:
        """New connections for ``port`` go to ``to_port``: ``share`` percent of them (drawn
        per connection), all by default; one atomic change, replacing the rule before."""
        ...

    async def remove(self, table: str) -> None: ...
    async def target(self, table: str, port: int | None = None) -> RedirectRule | None:
        """The redirect of ``port`` (or any port) in ``table``; ``None`` without a table."""
        ...

    async def forget(self, port: int, to_port: int) -> int:
        """Delete conntrack's entries of connections to ``port`` answered from ``to_port``
        and reset (:mod:`~rolling_update._handoff.conntrack`): how many. Raises
        :class:`HandoffError`, saying why, where it cannot."""
        ...


class LocalFirewall:
    """The handoff on this machine, through its ``nft`` command."""

    bypass_port: int | None = None

    async def unavailable(self) -> str | None:
        return await unavailable()

    async def redirect(self, table: str, port: int, to_port: int, share: int = 100) -> None:
        await redirect(table, port, to_port, share)

    async def remove(self, table: str) -> None:
        await remove(table)

    async def target(self, table: str, port: int | None = None) -> RedirectRule | None:
        return await target(table, port)

    async def forget(self, port: int, to_port: int) -> int:
        return await conntrack.forget(port, to_port)

    async def tcp_tables(self, container_id: str, pid: int) -> str:
        return proc_tables(pid)

    async def host_tables(self) -> str:
        return proc_tables(os.getpid())


class EngineFirewall:
    """The handoff on an engine's host, through helper containers and the engine API.

    The nft helper runs on the host network with CAP_NET_ADMIN only; the connection
    count (:meth:`tcp_tables`) joins the container's network namespace, with no
    capability. Both are a :class:`~rolling_update._handoff.helper.Helper`: by default
    (``own_nft`` false) ``image``, any image with ``chroot`` (blue's will do), runs the
    host's own ``nft`` and ``cat`` from its root mounted read-only; with ``own_nft``,
    ``image`` carries nft (and cat) itself and the host's root is not mounted at all.
    """

    def __init__(
        self, engine: Engine, image: str, *, service: str, bypass_port: int, own_nft: bool = False
    ) -> None:
        self.helper = Helper(engine, image, service=service, own_tools=own_nft)
        self.bypass_port: int | None = bypass_port
        self._no_conntrack: str | None = None

    async def _nft(self, *args: str) -> str:
        code, output = await self.helper.run("nft", *args, caps=["NET_ADMIN"])
        if code != 0:
            raise HandoffError(f"nft failed on the engine's host: {output.strip()}")
        return output

    async def tcp_tables(self, container_id: str, pid: int) -> str:
        return await helper_tables(self.helper, f"container:{container_id}")

    async def host_tables(self) -> str:
        return await helper_tables(self.helper, "host")

    async def unavailable(self) -> str | None:
        try:
            await self._nft("list", "tables")
        except HandoffError as exc:
            return str(exc)
        return None

    async def redirect(self, table: str, port: int, to_port: int, share: int = 100) -> None:
        # nft reads a whole script from one argument, as one transaction.
        await self._nft(_redirect_script(table, port, to_port, self.bypass_port, share))

    async def remove(self, table: str) -> None:
        await self._nft(_replace(table, ""))

    async def target(self, table: str, port: int | None = None) -> RedirectRule | None:
        if not self.helper.image:
            # No container of the service here (none lent its image): a table left behind
            # redirects to no container of it, so none could be removed behind it.
            return None
        try:
            text = await self._nft("list", "table", "inet", table)
        except HelperNotRun:
            # Not looked at is not "no table": recover would remove green behind it.
            raise
        except HandoffError:
            return None
        return _target_in(text, port)

    async def forget(self, port: int, to_port: int) -> int:
        # The host's own conntrack command, where it has one: the tool's netlink code
        # would need a Python on the host, or in the helper's image.
        if self._no_conntrack is not None:
            raise HandoffError(self._no_conntrack)
        removed = 0
        for family in ("ipv4", "ipv6"):
            code, output = await self.helper.run(
                "conntrack", "-D", "-f", family, "-p", "tcp", "--orig-port-dst", str(port),
                "--reply-port-src", str(to_port), "--state", "CLOSE", caps=["NET_ADMIN"],
            )  # fmt: skip
            if code == 127:
                self._no_conntrack = "the engine's host has no conntrack command"
                raise HandoffError(self._no_conntrack)
            # It exits 1 when it deleted nothing; the count says what it did.
            found = re.search(r"(\d+) flow entries have been deleted", output)
            if found is None:
                raise HandoffError(f"conntrack failed on the engine's host: {output.strip()}")
            removed += int(found.group(1))
        return removed


async def redirect(table: str, port: int, to_port: int, share: int = 100) -> None:
    """Send new connections for ``port`` (``share`` percent of them) to ``to_port``, replacing
    any rule before (atomic)."""
    await _nft(_redirect_script(table, port, to_port, None, share))


async def remove(table: str) -> None:
    """Drop the redirect, if there is one (atomic, idempotent); :data:`TRACK_TABLE` stays."""
    await _nft(_replace(table, ""))


async def target(table: str, port: int | None = None) -> RedirectRule | None:
    """Where and what share of ``port``'s (or any port's) new connections the table redirects;
    ``None`` when there is no table."""
    try:
        text = await _nft(None, "list", "table", "inet", table)
    except HandoffError:
        return None
    return _target_in(text, port)
