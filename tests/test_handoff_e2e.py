"""Zero failed requests: the handoff on the real engine, with clients probing all along.

Clients: one on 127.0.0.1 (every 20 ms, a new connection each time) and, in
the plain deploy, a container on the default bridge that reaches the host's
address (the prerouting path); IPv6 (::1) clients in their own case. After each case
the tool's nftables table is gone and exactly one production container serves.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from tests.support import BASE_IMAGE, KeepAliveProber, Prober, Run, Sampler, Service, docker

pytestmark = pytest.mark.docker

# A request fails when nobody answers within 10 s: the kernel retransmits a lost SYN at
# 1, 3 and 7 s, and every common client (curl, requests, browsers) waits longer than that
# for a connection. Each request that took over 1 s is kept too, with when it was sent.
BRIDGE_CLIENT = """
import json, sys, time, urllib.request
url, ok, failed, slow = sys.argv[1], 0, [], []
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    began = time.time()
    try:
        urllib.request.urlopen(url, timeout=10).read(); ok += 1
    except Exception as exc:
        failed.append([began, round(time.time() - began, 3), repr(exc)])
    else:
        if time.time() - began > 1:
            slow.append([began, round(time.time() - began, 3), "answered"])
    time.sleep(0.02)
print(json.dumps({"ok": ok, "failed": failed, "slow": slow}))
"""


@contextlib.contextmanager
def clients(service: Service) -> Iterator[tuple[Prober]]:
    with Prober(service.version_url()) as v4:
        yield (v4,)


def assert_clean(service: Service, version: str, *probers: Prober) -> None:
    for prober in probers:
        assert prober.failures == 0, f"{prober.url}: {prober.errors}"
        assert len(prober.samples) > 20
    assert service.serving() == version
    assert service.containers() == [service.name]
    assert not service.redirected()


@dataclass
class BridgeClient:
    """What the client in a container on the default bridge saw, once it ended."""

    ok: int = 0
    #: Each failed request: when it was sent (unix time), how long it took, the error.
    failures: list[tuple[float, float, str]] = field(default_factory=list)
    #: Each request answered after more than 1 s: when it was sent, how long it took.
    slow: list[tuple[float, float, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failures)

    def against(self, run: Run, *, slow: bool = False) -> str:
        """The failures (or slow answers) placed in the deploy's log: seconds after each of
        the three events before them."""
        events = [(logged_at(e), e["event"]) for e in run.events if "timestamp" in e]
        lines = []
        for sent, took, error in self.slow if slow else self.failures:
            before = [(at, name) for at, name in events if at <= sent][-3:]
            where = ", ".join(f"{name} +{sent - at:.3f}s" for at, name in before)
            lines.append(f"{error} ({took}s) after {where}")
        return "; ".join(lines)


def docker0_address() -> str:
    """The host's address on the default bridge (docker0), as a container reaches the host."""
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=True
    )
    return shown.stdout.split()[3].split("/")[0]


@contextlib.contextmanager
def bridge_client(service: Service, seconds: float = 25) -> Iterator[BridgeClient]:
    """A client on the default bridge GETting production's port on the host's address every
    20 ms (the prerouting path); its counts are filled in once the block has run."""
    url = f"http://{docker0_address()}:{service.port}/api/brain/hardening/status"
    seen = BridgeClient()
    client = docker("run", "-d", BASE_IMAGE, "python3", "-c", BRIDGE_CLIENT, url, str(seconds))
    try:
        yield seen
        docker("wait", client, timeout=seconds + 35)
        said = json.loads(docker("logs", client))
        seen.ok = said["ok"]
        seen.failures = [(sent, took, error) for sent, took, error in said["failed"]]
        seen.slow = [(sent, took, error) for sent, took, error in said["slow"]]
    finally:
        docker("rm", "-f", client, check=False)


@pytest.mark.parametrize("boot", [0, 2], ids=["instant-boot", "2s-boot"])
def test_a_deploy_fails_no_request(service: Service, boot: float) -> None:
    """Blue to green to production: not one request fails, from loopback or a bridge."""
    service.start_blue("1.0.0", knobs={"BOOT_DELAY": boot})
    service.write_app("2.0.0", knobs={"BOOT_DELAY": boot})
    service.config()
    with bridge_client(service) as bridged:
        with clients(service) as probers:
            run = service.deploy()
        assert run.code == 0, run.stderr
    assert run.event("handoff.redirect") and run.event("handoff.released")
    assert_clean(service, "2.0.0", *probers)
    assert probers[0].versions == ["1.0.0", "2.0.0"]
    assert bridged.failed == 0 and bridged.ok > 100, bridged.against(run)


@pytest.mark.parametrize("case", ["deploy", "rollback"])
def test_a_service_publishing_its_port_on_a_bridge_fails_no_request(
    service: Service, case: str
) -> None:
    """Blue on the default bridge publishing production's port (``-p 5221:5221``): the port
    is handed to green's published port and back: a loopback client (through docker-proxy)
    sees no failure, nor does one on the bridge (Docker's chains untouched) in a deploy."""
    flags = ["--restart", "unless-stopped", "-p", f"{service.port}:{service.port}"]
    service.start_blue("1.0.0", args=flags)
    knobs = {"FAIL_ON_PORT": service.port} if case == "rollback" else {}
    service.write_app("2.0.0", knobs=knobs)
    service.config(verify="timeout = 2\nsoak = 1\n")
    with bridge_client(service) as bridged:
        with clients(service) as probers:
            run = service.deploy()
        assert run.code == (0 if case == "deploy" else 1), run.stderr
    assert not run.event("switch.mode"), "fell back to a restart"
    assert run.event("handoff.redirect") and run.event("handoff.released")
    version = "2.0.0" if case == "deploy" else "1.0.0"
    assert_clean(service, version, *probers)
    # In a rollback, a bridge client's new connection can lose its SYN (and wait for the
    # kernel's retransmit) within a second of the redirect's release: CI once saw two
    # requests time out at the 3 s this client used to allow; none in 17 runs since (README).
    if bridged.slow:
        print(f"\nMEASURED bridge client slow answers ({case}): {bridged.against(run, slow=True)}")
    assert bridged.failed == 0, bridged.against(run)
    assert bridged.ok > 100
    production = service.inspect(service.name)
    assert production["HostConfig"]["NetworkMode"] in ("default", "bridge")
    published = production["HostConfig"]["PortBindings"]
    assert [b["HostPort"] for b in published[f"{service.port}/tcp"]] == [str(service.port)]


def logged_at(event: dict[str, Any]) -> float:
    """When the tool logged ``event`` (unix time): what it did was done by then."""
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def test_ipv6_connections_survive_the_redirect_going_in_and_out(service: Service) -> None:
    """IPv6 on ::1: new connections never fail, and a keep-alive connection is cut only by a
    container that stops under it, never by the redirect going in or out (the tool keeps
    conntrack running in its own table and redirects only a connection's first packet)."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config(switch="drain_timeout = 1\n")
    path = "/api/brain/hardening/status"
    with (
        Prober(f"http://[::1]:{service.port}{path}") as fresh,
        KeepAliveProber("::1", service.port, path) as kept,
    ):
        run = service.deploy()
    assert run.code == 0, run.stderr
    assert_clean(service, "2.0.0", fresh)
    (redirected,) = run.event("handoff.redirect")
    (released,) = run.event("handoff.released")
    # Blue's connection answers behind the redirect (until blue is drained and stopped);
    # the one opened behind it, to green, answers after the release (until green stops).
    assert kept.answered_across(logged_at(redirected)), kept.errors
    assert kept.answered_across(logged_at(released)), kept.errors
    # A request is lost only where a container ended under its connection: blue, green.
    assert kept.failures <= 2, kept.errors


def test_a_rollback_after_the_switch_fails_no_request(service: Service) -> None:
    """The new version fails on production's port: back to blue behind green, no failure."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"FAIL_ON_PORT": service.port})
    service.config(verify="timeout = 2\nsoak = 1\n")
    with clients(service) as probers:
        run = service.deploy()
    assert run.code == 1, run.stderr
    assert_clean(service, "1.0.0", *probers)


def test_sigterm_during_the_handoff_fails_no_request(service: Service) -> None:
    """SIGTERM once the port is handed to green: rolled back (143), no failed request."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config()
    with clients(service) as probers:
        run = service.deploy_interrupted("switch", signal.SIGTERM)
    assert run.code == 143, run.stderr
    assert_clean(service, "1.0.0", *probers)


def test_sigkill_during_the_handoff_then_recover_fails_no_request(service: Service) -> None:
    """SIGKILL with the redirect in place: green serves until recover brings blue back."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config()
    with clients(service) as probers:
        killed = service.deploy_interrupted("switch", signal.SIGKILL)
        assert killed.code == -signal.SIGKILL
        assert service.redirected()
        recovered = service.recover()
    assert recovered.code == 0, recovered.stderr
    assert "removed the redirect" in recovered.stderr
    assert_clean(service, "1.0.0", *probers)


def test_slow_requests_in_flight_on_blue_at_the_switch_all_finish(service: Service) -> None:
    """2 s requests in flight on blue finish: the switch waits for blue's connections before
    its SIGTERM, which the stand-in, like the Brain, answers by exiting at once."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config()
    slow = service.url(None, "/__standin/sleep?s=2")
    with (
        Prober(slow) as a,
        Prober(slow) as b,
        Prober(slow) as c,
        Prober(service.version_url()) as v,
    ):
        run = service.deploy()
    assert run.code == 0, run.stderr
    assert_clean(service, "2.0.0", v)
    for prober in (a, b, c):
        assert prober.failures == 0, prober.errors
        assert "1.0.0" in prober.versions and prober.versions[-1] == "2.0.0"
    (drained,) = run.event("switch.blue_drained")
    # The switch saw requests still running on blue, and waited until none was left.
    assert drained["at_start"] > 0 and drained["left"] == 0


@dataclass(frozen=True)
class Answer:
    version: str | None
    close: bool
    """The answer said ``Connection: close``."""
    retried: bool
    """Sent again on a new connection after the reused one failed."""


class KeepAlive(Sampler):
    """One keep-alive connection, a GET every 20 ms, a new connection only when the server
    said ``Connection: close`` or closed it; a failure on a reused connection is sent again
    once on a new one, as common clients do for idempotent requests (urllib3, aiohttp)."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(path, 0.02)
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3)
        self.answers: list[Answer] = []

    def get(self) -> tuple[str | None, bool]:
        try:
            self.conn.request("GET", self.url)
            response = self.conn.getresponse()
            body = json.loads(response.read())
            return body.get("version"), response.getheader("Connection") == "close"
        except (OSError, ValueError, http.client.HTTPException):
            self.conn.close()
            return None, False

    def sample(self) -> None:
        reused = self.conn.sock is not None
        version, close = self.get()
        retried = version is None and reused
        if retried:
            version, close = self.get()
        self.answers.append(Answer(version, close, retried))

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.conn.close()

    @property
    def failures(self) -> int:
        return sum(1 for a in self.answers if a.version is None)


@pytest.mark.parametrize("ask", ["drain_signal", "drain_request", None])
def test_blue_asked_to_drain_closes_its_keep_alive_connections(
    service: Service, ask: str | None
) -> None:
    """With switch.drain_signal or drain_request, blue (the stand-in's test-only drain) tells
    a busy keep-alive client Connection: close, which reconnects to green with 0 failed
    requests, and closes an idle one: blue's drain ends with none left, though its idle
    timeout (60 s) is past switch.drain_timeout. Without the ask the idle one is left."""
    knobs = {"STANDIN_DRAIN_SIGNAL": "SIGUSR2", "KEEPALIVE_TIMEOUT": 60}
    service.start_blue("1.0.0", knobs=knobs)
    service.write_app("2.0.0", knobs=knobs)
    line = {
        "drain_signal": 'drain_signal = "SIGUSR2"\n',
        "drain_request": 'drain_request = "POST /__standin/drain"\n',
        None: "",
    }[ask]
    service.config(switch=f"drain_timeout = {20 if ask else 2}\n{line}")
    idle = socket.create_connection(("127.0.0.1", service.port), timeout=5)
    try:
        idle.sendall(b"GET /api/brain/health HTTP/1.1\r\nHost: blue\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        with KeepAlive(service.port, "/api/brain/hardening/status") as busy:
            run = service.deploy()
    finally:
        idle.close()
    assert run.code == 0, run.stderr
    assert busy.failures == 0, busy.answers
    assert service.serving() == "2.0.0" and not service.redirected()
    (drained,) = run.event("switch.blue_drained")
    told = [a for a in busy.answers if a.close]
    if ask is None:
        # The control: nothing closes the idle connection before blue's SIGTERM.
        assert drained["left"] >= 1 and not told
        return
    assert drained["left"] == 0, drained
    # Blue, and only blue (green and production never did), said Connection: close; the
    # next request, on a new connection and not a retry, reached green.
    assert [a.version for a in told] == ["1.0.0"], busy.answers
    after = busy.answers[busy.answers.index(told[0]) + 1]
    assert after.version == "2.0.0" and not after.retried
    if ask == "drain_signal":
        assert [e["signal"] for e in run.event("switch.drain_signal")] == ["SIGUSR2"]
    else:
        done = [e["action"] for e in run.event("action.done")]
        assert done == ["switch.drain_request"]
