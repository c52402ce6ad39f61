"""Conntrack's reset entries: ctnetlink messages built and parsed, and the remote helper."""

from __future__ import annotations

import socket
import struct

import pytest
from structlog.testing import capture_logs

from rolling_update._errors import HandoffError
from rolling_update._handoff.conntrack import (
    TCP_CLOSE,
    delete_request,
    dump_request,
    messages,
    parse_entry,
)
from rolling_update._handoff.nft import EngineFirewall
from rolling_update._handoff.port import PortHandoff
from rolling_update.testing import FakeEngine

# A dump message from this machine's kernel (6.18), its payload past the netlink header:
# 127.0.0.1:40003 -> :40001 redirected to :40002, reset by the listener there (CLOSE).
REDIRECTED_AND_RESET = bytes.fromhex(
    "020000003400018014000180080001007f000001080002007f0000011c000280050001000600000006"
    "0002009c430000060003009c4100003400028014000180080001007f000001080002007f0000011c00"
    "02800500010006000000060002009c420000060003009c43000008000300000001ae08000800000000"
    "0008000c00c2b60a2c08000b00000000010800070000000009300004802c0001800500010008000000"
    "050002000a000000050003000a00000006000400230000000600050023000000"
)


def test_a_kernel_entry_is_read_and_named_back_to_a_delete() -> None:
    """The real message parses to its ports and CLOSE state; only its own ports match; the
    delete carries its original tuple and id, acknowledged, for its family."""
    entry = parse_entry(REDIRECTED_AND_RESET)
    assert entry is not None
    assert (entry.family, entry.protocol) == (socket.AF_INET, socket.IPPROTO_TCP)
    assert (entry.port, entry.reply_port, entry.state) == (40001, 40002, TCP_CLOSE)
    assert entry.reset_on(40001, 40002)
    assert not entry.reset_on(40001, 40001) and not entry.reset_on(40002, 40002)
    request = delete_request(entry, 7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq) == (len(request), 0x102, 0x5, 7)
    assert request[16] == socket.AF_INET
    original = REDIRECTED_AND_RESET[4 : 4 + 0x34]
    ident = bytes.fromhex("08000c00c2b60a2c")
    assert request[20:] == original + ident


def test_a_dump_asks_the_kernel_to_filter_and_a_datagram_splits_into_its_messages() -> None:
    """The dump is a GET with NLM_F_DUMP for one family, its tuples laid out as the kernel
    dumps them (so they parse back) and a filter on protocol, port and reply port; a datagram
    of several messages (padded) yields each one's type, sequence number and payload."""
    request = dump_request(3, socket.AF_INET6, 5221, 5222)
    assert struct.unpack_from("=IHHIIB", request) == (len(request), 0x101, 0x301, 3, 0, 10)
    asked = parse_entry(request[16:])
    assert asked is not None and (asked.protocol, asked.port, asked.reply_port) == (6, 5221, 5222)
    # CTA_FILTER (nested): original flags PROTO_NUM | DST_PORT, reply flags PROTO_NUM | SRC_PORT.
    assert request.endswith(bytes.fromhex("1400198008000100280000000800020018000000"))
    one = struct.pack("=IHHII", 21, 0x100, 2, 3, 0) + b"abcde" + b"\0" * 3
    done = struct.pack("=IHHII", 20, 3, 2, 3, 0) + b"\0" * 4
    assert list(messages(one + done)) == [(0x100, 3, b"abcde"), (3, 3, b"\0" * 4)]
    assert parse_entry(b"\x02\0\0\0") is None  # no original tuple: nothing to name


DELETED = "conntrack v1.4.7 (conntrack-tools): {} flow entries have been deleted.\n"


@pytest.mark.anyio
async def test_a_remote_host_deletes_through_its_conntrack_command() -> None:
    """On an engine's host, the host's conntrack by chroot with NET_ADMIN, once per family;
    its "0 deleted" exit 1 is no failure, and the counts add up."""
    engine = FakeEngine(images={"app:1"})
    answers = iter([(0, DELETED.format(2)), (1, DELETED.format(0))])
    engine.run_answer = lambda spec: next(answers)
    firewall = EngineFirewall(engine, "app:1", service="svc", bypass_port=15221)
    assert await firewall.forget(5221, 5222) == 2
    v4, v6 = (run.to_api() for run in engine.runs)
    assert v4["Entrypoint"] == ["chroot", "/host", "conntrack"]
    assert v4["HostConfig"]["CapAdd"] == ["NET_ADMIN"]
    assert v4["Cmd"] == [
        "-D", "-f", "ipv4", "-p", "tcp", "--orig-port-dst", "5221",
        "--reply-port-src", "5222", "--state", "CLOSE",
    ]  # fmt: skip
    assert v6["Cmd"][2] == "ipv6"


@pytest.mark.anyio
async def test_a_host_without_conntrack_is_a_warning_said_once_per_firewall() -> None:
    """No conntrack command on the host: the handoff logs why as a warning and goes on; the
    firewall remembers, so the next call runs no helper."""
    engine = FakeEngine(images={"app:1"})
    engine.run_answer = lambda spec: (127, "chroot: failed to run command 'conntrack'\n")
    firewall = EngineFirewall(engine, "app:1", service="svc", bypass_port=15221)
    handoff = PortHandoff(firewall, "app", 5221, 5222)
    with capture_logs() as logs:
        await handoff.forget(5222)
    (line,) = [e for e in logs if e["event"] == "handoff.conntrack_kept"]
    assert line["log_level"] == "warning" and "no conntrack command" in line["why"]
    with pytest.raises(HandoffError, match="no conntrack command"):
        await firewall.forget(5221, 5222)
    assert len(engine.runs) == 1
