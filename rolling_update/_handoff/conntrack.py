"""Conntrack's entries of a stopped listener's reset connections, forgotten through netlink.

A connection a listener resets (its process exits with a request unread) stays in
conntrack's CLOSE state for ``nf_conntrack_tcp_timeout_close`` (10 s), and a new SYN
from the same source port takes that entry up again, its translation included, instead
of starting a new one: the kernel drops such an entry for the SYN only when the
connection was closed by a FIN, or reset by the client (``nf_conntrack_proto_tcp.c``).
So a connection the handoff redirected to green, reset by green's exit, sends a new
connection from that port to green's port, where nothing listens any more: refused;
and one blue reset when it stopped skips the redirect to blue's closed port. Measured
on loopback: 3 of 3 refused, IPv4 and IPv6 (``tests/test_handoff.py``).

:func:`forget` deletes exactly those entries: TCP, to production's port, answered from
the stopped listener's port, in state CLOSE (a live connection is never touched). It
talks ctnetlink (``NETLINK_NETFILTER``, subsystem CTNETLINK) from the standard library:
a dump per family (IPCTNL_MSG_CT_GET), then a delete (IPCTNL_MSG_CT_DELETE) per entry
by its original tuple and id; only the attributes needed are parsed. The dump asks the
kernel to filter by the two ports (``CTA_FILTER``, Linux 5.8 and later; an older kernel
ignores it and sends every entry, filtered here): a connection's entry stays 2 minutes
after it ends (TIME_WAIT), so at 1,500 new connections/s the table holds some 180,000,
and read whole they took 1-2 s here, long enough for new connections to reuse the
ports of some of those reset (3 refused in one benchmark run). The ``conntrack``
command is not on every host, and it would be a dependency. Needs CAP_NET_ADMIN, as
the nftables table does.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import anyio

from rolling_update._errors import HandoffError

NETLINK_NETFILTER = 12
_CTNETLINK = 1  # nfnetlink subsystem
_CT_NEW = 0  # IPCTNL_MSG_CT_NEW: an entry, in a dump
_CT_GET = 1  # IPCTNL_MSG_CT_GET
_CT_DELETE = 2  # IPCTNL_MSG_CT_DELETE
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLA_F_NESTED = 0x8000
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
# enum ctattr_type, ctattr_tuple, ctattr_l4proto, ctattr_protoinfo(_tcp)
_CTA_TUPLE_ORIG = 1
_CTA_TUPLE_REPLY = 2
_CTA_PROTOINFO = 4
_CTA_ID = 12
_CTA_ZONE = 18
_CTA_FILTER = 25
_CTA_TUPLE_PROTO = 2
_CTA_PROTO_NUM = 1
_CTA_PROTO_SRC_PORT = 2
_CTA_PROTO_DST_PORT = 3
_CTA_PROTOINFO_TCP = 1
_CTA_PROTOINFO_TCP_STATE = 1
# enum ctattr_filter; CTA_FILTER_F_CTA_PROTO_NUM, _SRC_PORT, _DST_PORT (nf_internals.h)
_CTA_FILTER_ORIG_FLAGS = 1
_CTA_FILTER_REPLY_FLAGS = 2
_FILTER_PROTO_NUM = 1 << 3
_FILTER_SRC_PORT = 1 << 4
_FILTER_DST_PORT = 1 << 5
TCP_CLOSE = 8
"""``TCP_CONNTRACK_CLOSE``: the state a reset leaves an entry in."""
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, port id
_ATTR = struct.Struct("=HH")  # nlattr: length, type
_BUFFER = 1 << 16  # above the kernel's largest dump message (32 KiB)


@dataclass(frozen=True)
class Entry:
    """One conntrack entry, as much of it as :func:`forget` needs."""

    family: int
    protocol: int
    port: int
    """The original direction's destination port: what the client connected to."""
    reply_port: int
    """The reply direction's source port: where the answer comes from, after any NAT."""
    state: int | None
    """The TCP state (``TCP_CONNTRACK_*``), for a TCP entry."""
    key: bytes
    """The attributes that name it to a delete: its original tuple, id and zone, as dumped."""

    def reset_on(self, port: int, reply_port: int) -> bool:
        """A TCP connection to ``port``, answered from ``reply_port``, reset (CLOSE)."""
        return (
            self.protocol == socket.IPPROTO_TCP
            and self.port == port
            and self.reply_port == reply_port
            and self.state == TCP_CLOSE
        )


def _attrs(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    """Each attribute's type, payload and whole encoding (header and padding included)."""
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            return
        end = offset + ((length + 3) & ~3)
        yield kind & _NLA_TYPE_MASK, data[offset + _ATTR.size : offset + length], data[offset:end]
        offset = end


def _nested(data: bytes | None, *path: int) -> bytes | None:
    """The payload at ``path`` (attribute types, outermost first), or ``None``."""
    for kind in path:
        if data is None:
            return None
        data = next((payload for k, payload, _ in _attrs(data) if k == kind), None)
    return data


def _port(tuple_: bytes | None, kind: int) -> int:
    value = _nested(tuple_, _CTA_TUPLE_PROTO, kind)
    return 0 if value is None or len(value) < 2 else int.from_bytes(value[:2], "big")


def parse_entry(payload: bytes) -> Entry | None:
    """The entry an IPCTNL_MSG_CT_NEW message of a dump describes (its payload past the
    netlink header); ``None`` for one without an original tuple."""
    family = payload[0]
    found = {k: (p, raw) for k, p, raw in _attrs(payload[4:])}
    if _CTA_TUPLE_ORIG not in found:
        return None
    orig = found[_CTA_TUPLE_ORIG][0]
    reply = found[_CTA_TUPLE_REPLY][0] if _CTA_TUPLE_REPLY in found else None
    number = _nested(orig, _CTA_TUPLE_PROTO, _CTA_PROTO_NUM)
    state = None
    if _CTA_PROTOINFO in found:
        value = _nested(found[_CTA_PROTOINFO][0], _CTA_PROTOINFO_TCP, _CTA_PROTOINFO_TCP_STATE)
        state = None if not value else value[0]
    return Entry(
        family=family,
        protocol=number[0] if number else 0,
        port=_port(orig, _CTA_PROTO_DST_PORT),
        reply_port=_port(reply, _CTA_PROTO_SRC_PORT),
        state=state,
        key=b"".join(found[k][1] for k in (_CTA_TUPLE_ORIG, _CTA_ID, _CTA_ZONE) if k in found),
    )


def _attr(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def _tcp_tuple(kind: int, port_kind: int, port: int) -> bytes:
    """A tuple attribute naming TCP and one port: what the dump's filter compares."""
    proto = _attr(_CTA_PROTO_NUM, bytes([socket.IPPROTO_TCP]))
    proto += _attr(port_kind, port.to_bytes(2, "big"))
    return _attr(kind | _NLA_F_NESTED, _attr(_CTA_TUPLE_PROTO | _NLA_F_NESTED, proto))


def _request(kind: int, flags: int, seq: int, family: int, attrs: bytes = b"") -> bytes:
    # nfgenmsg: the family, NFNETLINK_V0, res_id 0.
    payload = struct.pack("=BBH", family, 0, 0) + attrs
    header = _HEADER.pack(_HEADER.size + len(payload), (_CTNETLINK << 8) | kind, flags, seq, 0)
    return header + payload


def dump_request(seq: int, family: int, port: int, reply_port: int) -> bytes:
    """Ask for the ``family`` entries of TCP connections to ``port`` answered from
    ``reply_port`` (the kernel's filter: a family is required with it)."""
    flags = _attr(_CTA_FILTER_ORIG_FLAGS, struct.pack("=I", _FILTER_PROTO_NUM | _FILTER_DST_PORT))
    flags += _attr(_CTA_FILTER_REPLY_FLAGS, struct.pack("=I", _FILTER_PROTO_NUM | _FILTER_SRC_PORT))
    attrs = (
        _tcp_tuple(_CTA_TUPLE_ORIG, _CTA_PROTO_DST_PORT, port)
        + _tcp_tuple(_CTA_TUPLE_REPLY, _CTA_PROTO_SRC_PORT, reply_port)
        + _attr(_CTA_FILTER | _NLA_F_NESTED, flags)
    )
    return _request(_CT_GET, _NLM_F_REQUEST | _NLM_F_DUMP, seq, family, attrs)


def delete_request(entry: Entry, seq: int) -> bytes:
    """Delete ``entry`` (only that one: its id is part of the request), acknowledged."""
    return _request(_CT_DELETE, _NLM_F_REQUEST | _NLM_F_ACK, seq, entry.family, entry.key)


def messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """Each netlink message of a datagram: its type, sequence number and payload."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            return
        yield kind, seq, data[offset + _HEADER.size : offset + length]
        offset += (length + 3) & ~3


def _error(payload: bytes) -> int:
    """An NLMSG_ERROR's code: 0 for an acknowledgement, else a negative errno."""
    return int(struct.unpack_from("=i", payload)[0])


async def _receive(sock: socket.socket) -> bytes:
    await anyio.wait_readable(sock)
    return sock.recv(_BUFFER)


async def _dump(sock: socket.socket, request: bytes, seq: int) -> list[Entry]:
    sock.send(request)
    entries: list[Entry] = []
    while True:  # ends at NLMSG_DONE; bounded by the caller's deadline
        for kind, got, payload in messages(await _receive(sock)):
            if got != seq:
                continue
            if kind == _NLMSG_DONE:
                return entries
            if kind == _NLMSG_ERROR and _error(payload) != 0:
                raise HandoffError(f"conntrack dump failed: {os.strerror(-_error(payload))}")
            if kind == (_CTNETLINK << 8) | _CT_NEW and (entry := parse_entry(payload)):
                entries.append(entry)


async def _delete(sock: socket.socket, entry: Entry, seq: int) -> bool:
    sock.send(delete_request(entry, seq))
    while True:  # until its acknowledgement; bounded by the caller's deadline
        for kind, got, payload in messages(await _receive(sock)):
            if got == seq and kind == _NLMSG_ERROR:
                code = _error(payload)
                if code in (0, -errno.ENOENT):
                    return code == 0  # ENOENT: it expired meanwhile
                raise HandoffError(f"conntrack delete failed: {os.strerror(-code)}")


async def forget(port: int, reply_port: int) -> int:
    """Delete this host's conntrack entries of TCP connections to ``port`` answered from
    ``reply_port`` and reset (CLOSE); how many. Raises :class:`HandoffError`. The caller
    bounds it."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError as exc:
        raise HandoffError(f"cannot open netfilter netlink: {exc.strerror}") from None
    with sock:
        try:
            sock.setblocking(False)
            sock.bind((0, 0))
            removed, seq = 0, 0
            # A family's entries go before the next walk: the kernel walks the whole table
            # for each dump, inside the send (about 0.05 s per 100,000 entries here).
            for family in (socket.AF_INET, socket.AF_INET6):
                seq += 1
                found = await _dump(sock, dump_request(seq, family, port, reply_port), seq)
                for entry in found:
                    if entry.reset_on(port, reply_port):
                        seq += 1
                        removed += await _delete(sock, entry, seq)
        except (OSError, struct.error, IndexError) as exc:
            raise HandoffError(f"conntrack over netlink failed: {exc}") from None
    return removed
