"""Blue's connections on a port, counted from the kernel's tables, here or through a helper."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from rolling_update import ContainerSpec
from rolling_update._errors import EngineError, HandoffError
from rolling_update._handoff.connections import (
    drained,
    endpoint,
    listening,
    own_endpoints,
    parse_established,
    proc_tables,
)
from rolling_update._handoff.nft import EngineFirewall
from rolling_update.testing import FakeContainer, FakeEngine

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1466 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1
   1: 0100007F:1466 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 2 1
   2: 0100007F:D2F0 0100007F:1466 01 00000000:00000000 00:00000000 00000000     0        0 3 1
   3: 0100007F:1466 0100007F:D2F2 06 00000000:00000000 03:00000000 00000000     0        0 0 3
   4: 0100007F:1467 0100007F:D2F4 01 00000000:00000000 00:00000000 00000000     0        0 4 1
"""
# A dual-stack listener's view of two clients: 127.0.0.1:53998 (IPv4-mapped) and ::1:53999.
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue
   0: 0000000000000000FFFF00000100007F:1466 0000000000000000FFFF00000100007F:D2EE 01 00000000
   1: 00000000000000000000000001000000:1466 00000000000000000000000001000000:D2EF 01 00000000
"""


def test_only_established_sockets_whose_local_port_is_the_port_count() -> None:
    """Listeners, the client side of a loopback pair, TIME_WAIT and green's port are left out."""
    assert parse_established(TCP, 0x1466) == 1
    assert parse_established(TCP, 0x1467) == 1
    assert parse_established(TCP, 80) == 0
    assert parse_established(TCP, 0x1466, frozenset({"127.0.0.1:53999"})) == 1
    assert parse_established(TCP, 0x1466, frozenset({"127.0.0.1:54000"})) == 0


def test_both_tables_count_and_an_ipv4_client_of_a_dual_stack_listener_is_recognised() -> None:
    """tcp and tcp6 one after the other (as a helper prints them) count together; a client's
    own IPv4 endpoint leaves out its IPv4-mapped row in tcp6; an error line is no row."""
    both = TCP + TCP6 + "cat: /proc/net/tcp6: No such file or directory\n"
    assert parse_established(both, 0x1466) == 3
    assert parse_established(both, 0x1466, frozenset({"127.0.0.1:53998", "[::1]:53999"})) == 1
    assert endpoint("0100007F:D2F0") == "127.0.0.1:54000"
    assert endpoint("0000000000000000FFFF00000100007F:0050") == "127.0.0.1:80"
    assert endpoint("00000000000000000000000001000000:0050") == "[::1]:80"
    assert endpoint("local_address") is None
    assert endpoint("0100007G:0050") is None


def test_a_live_connection_is_counted_until_it_closes(tmp_path: Path) -> None:
    """A real connection to a dual-stack listener of ours counts once (not as the tool's own
    once its IPv4 client end is ours), and not after it closes."""
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as server:
        port = server.getsockname()[1]
        assert parse_established(proc_tables(os.getpid()), port) == 0
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        assert parse_established(proc_tables(os.getpid()), port) == 1
        # The client end is this process's own: a connection of the tool's, not blue's client.
        assert parse_established(proc_tables(os.getpid()), port, own_endpoints()) == 0
        accepted.close()
        client.close()
        assert parse_established(proc_tables(os.getpid()), port) == 0
    with pytest.raises(HandoffError, match="cannot read"):
        proc_tables(2**22 + 7, proc=tmp_path)  # no such process


ROW = "   1: 0100007F:1466 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000 0 0 2 1\n"


class Closing(FakeEngine):
    """A host where blue's one connection closes after the helper has counted it twice."""

    blue: FakeContainer

    async def run_once(self, spec: ContainerSpec, *, limit: float = 15.0) -> tuple[int, str]:
        answer = await super().run_once(spec, limit=limit)
        if len(self.runs) == 2:
            self.blue.tcp = TCP.splitlines(keepends=True)[0]
        return answer


def blue_on(engine: FakeEngine) -> tuple[FakeContainer, EngineFirewall]:
    blue = engine.add(ContainerSpec(name="app", image="app:1"))
    blue.tcp = TCP.splitlines(keepends=True)[0] + ROW
    return blue, EngineFirewall(engine, "app:1", service="svc", bypass_port=15221)


@pytest.mark.anyio
async def test_a_remote_drain_counts_through_a_helper_in_the_containers_namespace() -> None:
    """On an engine's host the count is a helper in blue's network namespace (no capability,
    the host's cat by chroot); the drain ends, none left, once blue's connection closed."""
    engine = Closing()
    engine.blue, firewall = blue_on(engine)
    _, left, _ = await drained(engine, engine.blue.id, 0x1466, firewall=firewall, limit=30)
    assert left == 0
    assert len(engine.runs) == 3
    body = engine.runs[0].to_api()
    assert body["HostConfig"]["NetworkMode"] == f"container:{engine.blue.id}"
    assert body["HostConfig"]["CapAdd"] == []
    assert body["HostConfig"]["Binds"] == ["/:/host:ro"]
    assert body["Entrypoint"] == ["chroot", "/host", "cat"]
    assert body["Cmd"] == ["/proc/net/tcp", "/proc/net/tcp6"]


@pytest.mark.anyio
async def test_a_remote_drain_that_cannot_count_waits_its_limit_and_says_why() -> None:
    """A helper that cannot run: the whole limit is waited, None left, one log line says why;
    a container that no longer runs is not counted at all: none left, no wait."""
    engine = FakeEngine()
    blue, firewall = blue_on(engine)
    engine.failing["run_once"] = EngineError("create", "helper", 500, "no chroot in the image")
    with capture_logs() as logs:
        _, left, _ = await drained(engine, blue.id, 0x1466, firewall=firewall, limit=0.1)
    assert left is None
    (line,) = [e for e in logs if e["event"] == "handoff.connections_uncounted"]
    assert "no chroot in the image" in line["why"]
    blue.running = False
    assert await drained(engine, blue.id, 0x1466, firewall=firewall, limit=30) == (0.0, 0, 0)


def test_a_listener_on_the_port_is_seen_and_none_after_it_closes() -> None:
    """A socket listening on the port in this namespace (docker-proxy's, for a published
    port) shows in the host's tables; once closed, it does not."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert listening(proc_tables(os.getpid()), port)
        assert not listening(TCP, port)
    assert not listening(proc_tables(os.getpid()), port)
