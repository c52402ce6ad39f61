"""--log-format journald: journald's native protocol, read back by a socket of our own."""

from __future__ import annotations

import array
import os
import socket
from pathlib import Path

import structlog

from rolling_update._observe.logs import configure


def parse(entry: bytes) -> dict[str, str]:
    """journald's native protocol: KEY=value lines, or KEY, a 64-bit length, then the value."""
    fields: dict[str, str] = {}
    rest = entry
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            rest = after
        else:
            size = int.from_bytes(after[:8], "little")
            fields[line.decode()] = after[8 : 8 + size].decode()
            rest = after[8 + size + 1 :]
    return fields


def receive(server: socket.socket) -> dict[str, str]:
    data, ancillary, _, _ = server.recvmsg(1 << 20, socket.CMSG_SPACE(4))
    if not data:  # the large-entry path: a memfd passed as the entry
        fds = array.array("i")
        fds.frombytes(ancillary[0][2][:4])
        with os.fdopen(fds[0], "rb") as memfd:
            memfd.seek(0)
            data = memfd.read()
    return parse(data)


def test_entries_carry_standard_fields_and_ours(tmp_path: Path) -> None:
    """MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, DEPLOY_ID, STEP, EVENT; multi-line values intact."""
    path = str(tmp_path / "journal.socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        configure("journald", journal=path)
        log = structlog.get_logger()
        with structlog.contextvars.bound_contextvars(deploy_id="d42", step="verify"):
            log.warning("health.probe", container="app-green", reason="line one\nline two")
        fields = receive(server)
        configure("console")
    assert fields["SYSLOG_IDENTIFIER"] == "rolling-update"
    assert fields["PRIORITY"] == "4"
    assert (fields["DEPLOY_ID"], fields["STEP"], fields["EVENT"]) == (
        "d42",
        "verify",
        "health.probe",
    )
    assert fields["CONTAINER"] == "app-green"
    assert "line one\nline two" in fields["MESSAGE"]


def test_an_entry_too_large_for_a_datagram_goes_through_a_memfd(tmp_path: Path) -> None:
    """A 1 MiB log line is passed as a sealed memfd, as journald allows, and arrives whole."""
    path = str(tmp_path / "journal.socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        configure("journald", journal=path)
        structlog.get_logger().info("container.log", line="x" * (1 << 20))
        fields = receive(server)
        configure("console")
    assert fields["EVENT"] == "container.log" and len(fields["MESSAGE"]) > 1 << 20
