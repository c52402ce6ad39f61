"""Blue's connections on a port, counted from the kernel's tables."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from rolling_update._handoff.connections import (
    established,
    listening,
    own_endpoints,
    parse_established,
)

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1466 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:1466 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:D2F0 0100007F:1466 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0100007F:1466 0100007F:D2F2 06 00000000:00000000 03:00000000 00000000     0        0 0 3
   4: 0100007F:1467 0100007F:D2F4 01 00000000:00000000 00:00000000 00000000     0        0 4 1
"""


def test_only_established_sockets_whose_local_port_is_the_port_count() -> None:
    """Listeners, the client side of a loopback pair, TIME_WAIT and green's port are left out."""
    assert parse_established(TCP, 0x1466) == 1
    assert parse_established(TCP, 0x1467) == 1
    assert parse_established(TCP, 80) == 0
    assert parse_established(TCP, 0x1466, frozenset({"0100007F:D2F0"})) == 0


def test_a_live_connection_is_counted_until_it_closes(tmp_path: Path) -> None:
    """A real loopback connection to our listener counts once, and not after it closes."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert established(os.getpid(), port) == 0
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        assert established(os.getpid(), port) == 1
        # The client end is this process's own: a connection of the tool's, not blue's client.
        assert established(os.getpid(), port, ignore=own_endpoints()) == 0
        accepted.close()
        client.close()
        assert established(os.getpid(), port) == 0
    assert established(2**22 + 7, port, proc=tmp_path) is None  # not readable: no such process


def test_a_listener_on_the_port_is_seen_and_none_after_it_closes() -> None:
    """A socket listening on the port in this namespace (docker-proxy's, for a published port)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert listening(port)
    assert not listening(port)
