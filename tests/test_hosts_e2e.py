"""Several hosts on real engines: this machine's and ru-host2's (a dockerd in a netns)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from rolling_update._engine.docker import DockerEngine
from rolling_update._handoff.connections import drained, own_endpoints, parse_established
from rolling_update._handoff.nft import EngineFirewall, RedirectRule, table_name
from rolling_update._hosts.hosts import for_unit, pick, units_of
from rolling_update._state.journal import Journal
from tests import faults
from tests.engineproxy import EngineProxy, proxied
from tests.hosts import (
    CERTS,
    HOST2,
    HOST2_CGROUP,
    HOST2_DISK,
    HOST2_GREEN,
    HOST2_PORT,
    HOST2_SOCKET,
    HOSTS_ROOT,
    SSH_CONFIG,
    TwoHosts,
    docker2,
    ensure_host2_engine,
    nft_image,
    reboot_host2,
    require_host2,
    restart_host2_engine,
    two_hosts,
)
from tests.support import (
    BASE_IMAGE,
    FAULT_PHASES,
    FAULT_TICK,
    ROOT,
    Prober,
    Run,
    Service,
    Struck,
    deploy_with_fault,
    docker,
    free_port,
    get_json,
    swapped,
)
from tests.test_engine_hang_e2e import BOUND, CALL_TIMEOUT, later
from tests.test_engine_resource_faults_e2e import REFUSED
from tests.test_resource_faults_e2e import SmallDisk

__all__ = ["two_hosts"]


pytestmark = pytest.mark.docker


def readme_example(service: Service) -> Path:
    """The README's two-host config, on this machine and ru-host2: names, ports, the SSH
    target and timings changed, nothing else."""
    readme = (ROOT / "README.md").read_text()
    marker = readme.index("<!-- two-hosts example")
    text = readme[readme.index("```toml\n", marker) + 8 : readme.index("```\n", marker + 40)]
    swaps = [
        (r'"cecelia-node-brain-green"', f'"{service.green}"'),
        (r'"cecelia-node-brain"', f'"{service.name}"'),
        (r"(?m)^port = 5221", f"port = {service.port}"),
        (r"(?m)^green_port = 5222", f"green_port = {service.green_port}"),
        (r'"cecelia-brain:\{version\}"', f'"{service.repo}:{{version}}"'),
        (
            r'engine = "ssh://deploy@brain-hk.example.com"',
            f'engine = "ssh://root@{HOST2}"\nsocket = "{HOST2_SOCKET}"\n'
            f'ssh_config = "{SSH_CONFIG}"\nport = {HOST2_PORT}\ngreen_port = {HOST2_GREEN}',
        ),
        (
            r'(?m)^version_path = "/api/brain/hardening/status"',
            'version_path = "/api/brain/hardening/status"\ninterval = 0.1\nattempts = 150',
        ),
    ]
    text = swapped(text, swaps, "the README's two-host example")
    text += (
        "\n[tick]\nsettle = 0\nguard = 1\ninterval = 0.1\n\n[verify]\nsoak = 1\n\n"
        f'[state]\ndir = "{service.workdir / "state"}"\n'
    )
    service.write_env_file({})
    path = service.workdir / "rolling-update.toml"
    path.write_text(text)
    return path


def test_readme_two_host_example_deploys_canary_first(
    service: Service, two_hosts: TwoHosts
) -> None:
    """The README's example (here, then ssh://) builds and migrates once and updates both hosts."""
    two_hosts.start_blues("1.0.0")
    readme_example(service)
    service.write_app("2.0.0", knobs={"ECHO_ENV": "ENV_REGION"})
    run = service.deploy(timeout=300)
    assert run.code == 0, run.stderr + run.stdout[-3000:]
    assert service.serving() == "2.0.0"
    assert two_hosts.serving2() == "2.0.0"
    assert two_hosts.serving2(HOST2_GREEN) is None
    assert two_hosts.containers2() == [service.name]
    assert [e["host"] for e in run.event("rollout.host")] == ["us", "hk"]
    assert [e["host"] for e in run.event("image.copied")] == ["hk"]
    steps = {(e["host"], e["step"]) for e in run.event("deploy.step.started")}
    assert ("us", "build") in steps and ("us", "migrate") in steps
    assert ("hk", "build") not in steps and ("hk", "migrate") not in steps
    assert ("hk", "handoff") in steps
    regions = {
        e["host"]: e["line"]
        for e in run.event("container.log")
        if "ENV_REGION=" in e.get("line", "")
    }
    assert regions == {"us": "ENV_REGION=us", "hk": "ENV_REGION=hk"}


def test_canary_failure_stops_before_the_second_host(service: Service, two_hosts: TwoHosts) -> None:
    """A canary failure rolls the canary back and leaves the second host untouched (exit 1)."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config()
    service.write_app("2.0.0", knobs={"FAIL_HEALTH": "1"})
    run = service.deploy(timeout=300)
    assert run.code == 1, run.stderr
    assert service.serving() == "1.0.0"
    assert two_hosts.serving2() == "1.0.0"
    assert not run.event("image.copy")
    assert [(e["host"], e["result"]) for e in run.event("rollout.host")] == [
        ("local", "rolled-back")
    ]
    assert "h2               not-started" in run.stderr
    assert two_hosts.containers2() == [service.name]


def test_second_host_failure_with_rollback_all_takes_the_canary_back(
    service: Service, two_hosts: TwoHosts
) -> None:
    """rollback-all: a failure on the second host takes the updated canary back too."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config(extra='[rollout]\non_failure = "rollback-all"\n')
    # Only green on ru-host2 binds 5222: the release fails there alone.
    service.write_app("2.0.0", knobs={"FAIL_ON_PORT": str(HOST2_GREEN)})
    run = service.deploy(timeout=300)
    assert run.code == 1, run.stderr
    assert service.serving() == "1.0.0"
    assert two_hosts.serving2() == "1.0.0"
    assert "local            reverted" in run.stderr
    assert "h2               rolled-back" in run.stderr
    assert service.containers() == [service.name]
    assert two_hosts.containers2() == [service.name]


def test_second_host_failure_with_stop_keeps_the_canary_updated(
    service: Service, two_hosts: TwoHosts
) -> None:
    """stop: a failure on the second host leaves the canary on the new version."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config()
    service.write_app("2.0.0", knobs={"FAIL_ON_PORT": str(HOST2_GREEN)})
    run = service.deploy(timeout=300)
    assert run.code == 1, run.stderr
    assert service.serving() == "2.0.0"
    assert two_hosts.serving2() == "1.0.0"


def test_sigint_mid_rollout_rolls_back_the_host_in_flight(
    service: Service, two_hosts: TwoHosts
) -> None:
    """Ctrl-C during the second host rolls it back and stops (exit 130); every host serves."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config()
    service.write_app("2.0.0")
    run = service.deploy_interrupted("green-health", signal.SIGINT, host="h2", timeout=120)
    assert run.code == 130, run.stderr
    assert service.serving() == "2.0.0"
    assert two_hosts.serving2() == "1.0.0"
    assert "h2               interrupted" in run.stderr
    assert two_hosts.containers2() == [service.name]
    assert not two_hosts.redirected2()


def test_sigint_with_rollback_all_takes_the_updated_canary_back(
    service: Service, two_hosts: TwoHosts
) -> None:
    """Ctrl-C during the second host with rollback-all rolls it back and reverts the canary."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config(extra='[rollout]\non_failure = "rollback-all"\n')
    service.write_app("2.0.0")
    run = service.deploy_interrupted("green-health", signal.SIGINT, host="h2", timeout=120)
    assert run.code == 130, run.stderr
    assert (service.serving(), two_hosts.serving2()) == ("1.0.0", "1.0.0")
    assert "local            reverted" in run.stderr
    assert "h2               interrupted" in run.stderr
    assert service.containers() == [service.name]
    assert two_hosts.containers2() == [service.name]


def test_sigkill_then_recover_on_both_hosts(service: Service, two_hosts: TwoHosts) -> None:
    """SIGKILL mid-switch on the second host, then recover: both hosts serve, no leftovers."""
    two_hosts.start_blues("1.0.0")
    # The second host's helper brings its own nft (helper_image), through deploy and recover.
    two_hosts.config(h2_extra=f'helper_image = "{nft_image()}"\n')
    service.write_app("2.0.0")
    run = service.deploy_interrupted("switch", signal.SIGKILL, host="h2", timeout=120)
    assert run.code == -signal.SIGKILL
    assert two_hosts.redirected2()
    fixed = service.recover()
    assert fixed.code == 0, fixed.stderr
    assert "h2: consistent" in fixed.stderr
    assert "local: consistent" in fixed.stderr
    assert service.serving() == "2.0.0"
    assert two_hosts.serving2() in ("1.0.0", "2.0.0")
    assert service.containers() == [service.name]
    assert two_hosts.containers2() == [service.name]
    assert not two_hosts.redirected2()
    assert not service.marked()


def test_tcp_tls_host_deploys_and_status_history_show_every_host(
    service: Service, two_hosts: TwoHosts
) -> None:
    """A tcp+TLS host deploys; status, history and plan show every host; rollback --host one."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config(engine2="tls")
    service.write_app("2.0.0")
    run = service.deploy(timeout=300)
    assert run.code == 0, run.stderr
    assert (service.serving(), two_hosts.serving2()) == ("2.0.0", "2.0.0")
    status = json.loads(service.run("status", "--json", timeout=120).stdout)["hosts"]
    assert sorted(status) == ["h2", "local"]
    assert all(s["production"]["version"] == "2.0.0" for s in status.values())
    assert status["h2"]["production"]["healthy"] and status["h2"]["redirect_to"] is None
    shown = service.run("history", "--json", "--host", "h2", timeout=120)
    history = json.loads(shown.stdout)["hosts"]
    assert [(e["from_version"], e["to_version"], e["result"]) for e in history["h2"]] == [
        ("1.0.0", "2.0.0", "deployed")
    ]
    human = service.run("status", timeout=120).stdout
    assert "== host local" in human and "== host h2" in human
    service.write_app("3.0.0")
    plan = json.loads(service.run("plan", "--json", timeout=120).stdout)["hosts"]
    assert [s["name"] for s in plan["local"]["steps"]][:3] == ["guard", "build", "migrate"]
    assert "build" not in [s["name"] for s in plan["h2"]["steps"]]
    assert plan["h2"]["build"]["copied_from"] == "local"
    back = service.run("rollback", "--host", "h2", timeout=120)
    assert back.code == 0, back.stderr
    assert (service.serving(), two_hosts.serving2()) == ("2.0.0", "1.0.0")


def test_an_engine_named_by_docker_tls_verify_is_reached_over_tls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An engine named only as the docker CLI takes it (DOCKER_HOST=tcp://, DOCKER_TLS_VERIFY,
    DOCKER_CERT_PATH) is reached over TLS with those certificates: the context aiodocker
    settles on is the one the tool's own connector speaks with."""
    require_host2()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://{HOST2}:2376")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(CERTS))

    async def main() -> None:
        async with DockerEngine() as engine:
            assert await engine.inspect("no-such-container-here") is None

    anyio.run(main)


def test_parallel_hosts_after_the_canary_with_ssh_probes(
    service: Service, two_hosts: TwoHosts
) -> None:
    """parallel = 2 updates two hosts at once after the canary, one probed over SSH."""
    two_hosts.start_blues("1.0.0")
    port_b, green_b = free_port(), free_port()
    docker(
        "run", "-d", "--name", f"{service.name}-b", "--network", "host",
        "--restart", "unless-stopped", "-e", f"PORT={port_b}", f"{service.repo}:1.0.0",
    )  # fmt: skip
    extra = (
        f'[[hosts]]\nname = "local-b"\ncontainer = "{service.name}-b"\n'
        f'green_container = "{service.name}-b-green"\nport = {port_b}\ngreen_port = {green_b}\n\n'
        "[rollout]\nparallel = 2\n"
    )
    two_hosts.config(engine2="ssh-probe", extra=extra)
    service.write_app("2.0.0")
    run = service.deploy(timeout=300)
    assert run.code == 0, run.stderr
    assert service.serving() == service.serving(port_b) == two_hosts.serving2() == "2.0.0"
    order = [(e["event"], e.get("host")) for e in run.events]
    # With one at a time, h2 (second in the list) would be done before local-b began.
    assert order.index(("deploy.started", "local-b")) < order.index(("deploy.done", "h2"))
    assert [e["host"] for e in run.event("image.present")] == ["local-b"]
    assert [e["probe"] for e in run.event("host.connected") if e["host"] == "h2"] == ["127.77.0.3"]


@pytest.mark.parametrize("own_nft", [False, True], ids=["host-nft-by-chroot", "helper-image-nft"])
def test_remote_redirect_moves_new_connections_and_the_bypass_port_reaches_production(
    service: Service, two_hosts: TwoHosts, own_nft: bool
) -> None:
    """The nft helper redirects a remote port; the bypass port still reaches production."""
    two_hosts.start_blue2("1.0.0")
    docker2(
        "run", "-d", "--name", service.green, "--network", "host",
        "-e", f"PORT={HOST2_GREEN}", f"{service.repo}:1.0.0",
    )  # fmt: skip
    image = nft_image() if own_nft else f"{service.repo}:1.0.0"

    def port_behind(port: int) -> Any:
        body = get_json(f"http://{HOST2}:{port}/api/brain/hardening/status")
        return body.get("port") if isinstance(body, dict) else None

    async def main() -> None:
        async with DockerEngine(f"unix://{HOST2_SOCKET}") as engine:
            firewall = EngineFirewall(
                engine, image, service=service.name, bypass_port=15221, own_nft=own_nft
            )
            assert await firewall.unavailable() is None
            table = table_name(service.name)
            await firewall.redirect(table, HOST2_PORT, HOST2_GREEN)
            assert await firewall.target(table, HOST2_PORT) == RedirectRule(HOST2_GREEN)
            assert await anyio.to_thread.run_sync(port_behind, HOST2_PORT) == HOST2_GREEN
            assert await anyio.to_thread.run_sync(port_behind, 15221) == HOST2_PORT
            await firewall.remove(table)
            assert await firewall.target(table) is None
            assert await anyio.to_thread.run_sync(port_behind, HOST2_PORT) == HOST2_PORT
            helpers = docker2("ps", "-aq", "--filter", "label=io.rolling-update.role=helper")
            assert helpers == ""

    anyio.run(main)


@pytest.mark.parametrize("own_nft", [False, True], ids=["host-cat-by-chroot", "helper-image-cat"])
def test_remote_connection_count_sees_blues_clients_and_knows_the_tools_own(
    service: Service, two_hosts: TwoHosts, own_nft: bool
) -> None:
    """A helper in blue's network namespace on ru-host2 counts a connection of ours that came
    in through the bypass port, recognises it as the tool's own, and the drain ends once it
    closed; no helper is left."""
    two_hosts.start_blue2("1.0.0")
    image = nft_image() if own_nft else f"{service.repo}:1.0.0"

    async def count(firewall: EngineFirewall, blue: str, *, ignore: frozenset[str]) -> int:
        return parse_established(await firewall.tcp_tables(blue, 0), HOST2_PORT, ignore)

    async def main() -> None:
        async with DockerEngine(f"unix://{HOST2_SOCKET}") as engine:
            blue = docker2("inspect", "-f", "{{.Id}}", service.name)
            firewall = EngineFirewall(
                engine, image, service=service.name, bypass_port=15221, own_nft=own_nft
            )
            table = table_name(service.name)
            await firewall.redirect(table, HOST2_PORT, HOST2_GREEN)
            try:
                client = await anyio.to_thread.run_sync(socket.create_connection, (HOST2, 15221))
                with client:
                    assert await count(firewall, blue, ignore=frozenset()) == 1
                    # Seen from ru-host2, our end is the same address: the redirect of the
                    # bypass port changed the destination only.
                    assert await count(firewall, blue, ignore=own_endpoints()) == 0
                _, left, _ = await drained(engine, blue, HOST2_PORT, firewall=firewall, limit=30)
                assert left == 0
            finally:
                await firewall.remove(table)
        assert docker2("ps", "-aq", "--filter", "label=io.rolling-update.role=helper") == ""

    anyio.run(main)


class KeptAlive(threading.Thread):
    """One keep-alive connection: the version asked every second (never idle as long as the
    server's 5 s keep-alive timeout) until :meth:`finish` sends ``path`` on it; then closed.
    ``answers`` are (local port, status, body): one local port is one connection."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.conn = http.client.HTTPConnection(host, port, timeout=30)
        self.answers: list[tuple[int, int, Any]] = []
        self.error: str | None = None
        self._last = threading.Event()
        self._path = ""

    def get(self, path: str) -> None:
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        body = json.loads(response.read())
        assert self.conn.sock is not None
        self.answers.append((self.conn.sock.getsockname()[1], response.status, body))

    def run(self) -> None:
        version = "/api/brain/hardening/status"
        try:
            self.get(version)
            while not self._last.wait(1):
                self.get(version)
            self.get(self._path)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.error = repr(exc)
        finally:
            self.conn.close()

    def finish(self, path: str) -> None:
        self._path = path
        self._last.set()


def test_remote_switch_waits_until_blues_connections_close(
    service: Service, two_hosts: TwoHosts
) -> None:
    """On ru-host2 the switch counts blue's connections through a helper container: a 3 s
    request sent on a client's kept-alive connection once the switch began is answered by
    blue (its SIGTERM, which the stand-in answers by exiting at once, waited for it), and the
    drain ends with no connection left, before its limit."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config(extra="[switch]\ndrain_timeout = 30\n")
    service.write_app("2.0.0")
    client = KeptAlive(HOST2, HOST2_PORT)
    client.start()
    try:
        with service.cli("deploy", timeout=300) as cli:
            cli.until_event("deploy.step.started", step="switch", host="h2")
            client.finish("/__standin/sleep?s=3")
            run = cli.finish()
    finally:
        client.finish("/api/brain/hardening/status")
        client.join(30)
    assert run.code == 0, run.stderr
    assert client.error is None
    assert len({port for port, _, _ in client.answers}) == 1, "one connection throughout"
    *_, (_, status, body) = client.answers
    assert (status, body.get("version")) == (200, "1.0.0")
    (drain,) = [e for e in run.event("switch.blue_drained") if e["host"] == "h2"]
    assert drain["left"] == 0 and drain["seconds"] < 30
    assert not run.event("handoff.connections_uncounted")
    assert two_hosts.serving2() == "2.0.0"


def test_a_gradual_shift_on_the_second_host_splits_its_clients_through_the_nft_helper(
    service: Service, two_hosts: TwoHosts
) -> None:
    """On ru-host2, where nft runs in the engine's helper container, a 10 → 100 shift holds
    10% while a client of h2's production port reaches both versions, passes its gate
    (probed through that port, as the client) and completes: 0 failed requests there, one
    production container, no table and no helper left."""
    two_hosts.start_blues("1.0.0")
    # The gate probes every 20 ms: at 10% a 4 s hold sends some 20 of the client's ~200
    # probes to green (none in 10^9 holds would miss it).
    two_hosts.config(switch="steps = [10, 100]\nstep_hold = 4\ngate_interval = 0.02\n")
    service.write_app("2.0.0")
    h2_url = f"http://{HOST2}:{HOST2_PORT}/api/brain/hardening/status"
    with Prober(h2_url) as prober, service.cli("deploy", timeout=300) as cli:
        cli.until_event("shift.step", share=10, host="h2")
        began = time.monotonic()
        gate = cli.until_event("shift.gate", share=10, host="h2")
        ended = time.monotonic()
        run = cli.finish()
    assert run.code == 0, run.tail()
    assert gate["passed"] is True and gate["answers"] > 0, gate
    during = [v for t, v in list(prober.samples) if began <= t <= ended and v is not None]
    assert set(during) == {"1.0.0", "2.0.0"}, f"during h2's 10% hold: only {set(during)}"
    assert prober.failures == 0, prober.errors
    assert len(prober.samples) > 20
    assert (service.serving(), two_hosts.serving2()) == ("2.0.0", "2.0.0")
    assert two_hosts.containers2() == [service.name]
    assert not two_hosts.redirected2()
    assert docker2("ps", "-aq", "--filter", "label=io.rolling-update.role=helper") == ""
    print(
        f"outcome: h2 10% hold: {during.count('2.0.0')} of {len(during)} client requests to "
        f"green, gate {gate['answers']} answers through h2's port; "
        f"{prober.failures} of {len(prober.samples)} failed"
    )


REGISTRY = "10.231.2.1:5000"


def through_registry(service: Service, two_hosts: TwoHosts) -> str:
    """Both blues on 1.0.0, the config distributing v2 through the test registry; the
    image's name there."""
    two_hosts.start_blues("1.0.0")
    path = two_hosts.config(extra='[rollout]\ndistribute = "registry"\n')
    image = f"{REGISTRY}/{service.repo}"
    path.write_text(
        path.read_text().replace(
            f'name = "{service.repo}:{{version}}"', f'name = "{image}:{{version}}"'
        )
    )
    service.write_app("2.0.0")
    return image


def test_registry_distribution_pushes_once_and_the_host_pulls(
    service: Service, two_hosts: TwoHosts
) -> None:
    """distribute = registry pushes once; the other host pulls the same image id."""
    image = through_registry(service, two_hosts)
    config_dir = service.workdir / "docker-config"
    config_dir.mkdir()
    try:
        run = service.deploy(timeout=300, environ={"DOCKER_CONFIG": str(config_dir)})
        assert run.code == 0, run.stderr
        assert (service.serving(), two_hosts.serving2()) == ("2.0.0", "2.0.0")
        assert len(run.event("image.pushed")) == 1
        assert [e["host"] for e in run.event("image.pulled")] == ["h2"]
        assert not run.event("image.copy")
        assert docker2("image", "inspect", "-f", "{{.Id}}", f"{image}:2.0.0") == docker(
            "image", "inspect", "-f", "{{.Id}}", f"{image}:2.0.0"
        )
    finally:
        docker("rmi", "-f", f"{image}:2.0.0", check=False)
        docker2("rmi", "-f", f"{image}:2.0.0", check=False)


REGISTRY_DATA = Path("/var/lib/rolling-update-hosts/registry/data")


def test_the_registrys_disk_filling_during_the_image_copy_stops_before_the_host(
    service: Service, two_hosts: TwoHosts, tmp_path: Path
) -> None:
    """The registry's disk is full when the image is pushed for the second host: the push
    fails, so the rollout stops before h2 changes (exit 1, h2 refused, naming the push),
    the canary keeps the new version; once there is room, the next deploy finishes h2."""
    image = through_registry(service, two_hosts)
    config_dir = service.workdir / "docker-config"
    config_dir.mkdir()
    environ = {"DOCKER_CONFIG": str(config_dir)}
    disk = SmallDisk(tmp_path)
    try:
        disk.fill()
        # Over the running registry's storage: it opens every path anew, so its uploads
        # land on the full filesystem (what it stored before is hidden meanwhile).
        subprocess.run(["mount", "--bind", str(disk.path), str(REGISTRY_DATA)], check=True)
        try:
            run = service.deploy(timeout=300, environ=environ)
        finally:
            subprocess.run(["umount", str(REGISTRY_DATA)], check=True)
        assert run.code == 1, run.tail()
        assert "h2: refused" in run.stderr and "docker push" in run.stderr, run.stderr
        assert not run.event("image.pushed") and not run.event("image.pulled")
        assert service.serving() == "2.0.0" and two_hosts.serving2() == "1.0.0"
        assert service.containers() == [service.name]
        assert two_hosts.containers2() == [service.name]
        assert not two_hosts.redirected2() and not service.marked()
        print(f"outcome: registry disk full, image copy: exit {run.code}; {run.stderr!r}")
        again = service.deploy(timeout=300, environ=environ)
        assert again.code == 0, again.tail()
        assert (service.serving(), two_hosts.serving2()) == ("2.0.0", "2.0.0")
    finally:
        disk.close()
        docker("rmi", "-f", f"{image}:2.0.0", check=False)
        docker2("rmi", "-f", f"{image}:2.0.0", check=False)


def test_unreachable_or_untrusted_host_refuses_the_rollout_touching_nothing(
    service: Service, two_hosts: TwoHosts
) -> None:
    """An unreachable or untrusted host refuses the rollout (exit 2); status and recover go on."""
    two_hosts.start_blues("1.0.0")
    path = two_hosts.config()
    service.write_app("2.0.0")
    began = time.time()
    untrusted = service.workdir / "ssh_config"
    untrusted.write_text(f"Host {HOST2}\n  User root\n  IdentityFile {HOSTS_ROOT}/ssh/id_ed25519\n")
    text = path.read_text()
    path.write_text(text.replace(str(SSH_CONFIG), str(untrusted)))
    run = service.deploy(timeout=120)
    assert run.code == 2, run.stderr
    assert "Host key is not trusted" in run.stderr and "nothing was changed" in run.stderr
    path.write_text(
        text.replace(f"ssh://root@{HOST2}", "tcp://127.0.0.1:1").replace(
            f'socket = "{HOST2_SOCKET}"\n', ""
        )
    )
    run = service.deploy(timeout=120)
    assert run.code == 2, run.stderr
    assert "unreachable" in run.stderr and "nothing was changed" in run.stderr
    assert service.serving() == "1.0.0" and service.created_since(began) == []
    shown = service.run("status", "--json", timeout=120)
    assert shown.code == 1
    hosts = json.loads(shown.stdout)["hosts"]
    assert hosts["local"]["production"]["version"] == "1.0.0"
    assert "unreachable" in hosts["h2"]["error"]
    fixed = service.recover()
    assert fixed.code == 2, fixed.stderr
    assert "local: consistent" in fixed.stderr and "h2: error" in fixed.stderr


def test_every_host_is_checked_before_the_canary_changes(
    service: Service, two_hosts: TwoHosts
) -> None:
    """A container in the way on the second host refuses the rollout before the canary (exit 2)."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config()
    service.write_app("2.0.0")
    docker2("create", "--name", service.green, BASE_IMAGE, "true")
    began = time.time()
    run = service.deploy(timeout=120)
    assert run.code == 2, run.stderr
    assert f"host h2: a container named {service.green} exists" in run.stderr
    assert service.created_since(began) == [] and not run.event("deploy.step.started")
    assert (service.serving(), two_hosts.serving2()) == ("1.0.0", "1.0.0")


def test_ssh_host_is_reached_with_the_key_in_the_users_agent(
    service: Service, two_hosts: TwoHosts
) -> None:
    """An ssh:// host whose only key is in the user's ssh-agent (no IdentityFile) is reached."""
    path = two_hosts.config()
    agent_only = service.workdir / "ssh_config"
    known = HOSTS_ROOT / "ssh" / "known_hosts"
    agent_only.write_text(f"Host {HOST2}\n  User root\n  UserKnownHostsFile {known}\n")
    path.write_text(path.read_text().replace(str(SSH_CONFIG), str(agent_only)))
    socket_path = str(service.workdir / "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", socket_path], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not Path(socket_path).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": socket_path}
        key = str(HOSTS_ROOT / "ssh" / "id_ed25519")
        subprocess.run(["ssh-add", "-q", key], env=env, check=True, capture_output=True)
        status = ("status", "--json", "--host", "h2")
        shown = service.run(*status, environ={"SSH_AUTH_SOCK": socket_path})
        assert shown.code == 0, shown.stderr
        assert json.loads(shown.stdout)["hosts"]["h2"]["production"] is None
        refused = service.run(*status, unset=("ENV_REGION", "SSH_AUTH_SOCK"))
        assert refused.code == 1
        assert "Permission denied" in json.loads(refused.stdout)["hosts"]["h2"]["error"]
    finally:
        agent.terminate()
        agent.wait(5)


@contextlib.contextmanager
def host2_unplugged() -> Iterator[None]:
    """ru-host2's veth set down (its engine, sshd and service unreachable from here), and up
    again when the block ends, whatever happened in it."""
    subprocess.run(["ip", "link", "set", "ru-h2a", "down"], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "link", "set", "ru-h2a", "up"], check=True)
        deadline = time.monotonic() + 30
        while two_hosts_engine_answers() is False and time.monotonic() < deadline:
            time.sleep(0.2)


def two_hosts_engine_answers() -> bool:
    try:
        with socket.create_connection((HOST2, 2376), timeout=1):
            return True
    except OSError:
        return False


def h2_committed(service: Service) -> bool:
    """Whether h2's journal, left by a deploy that did not finish there, says committed:
    what `recover --host h2` must then leave serving is the new version, else the old."""
    settings = service.settings()
    (h2,) = pick(settings, "h2")
    left = Journal.load(Journal.path_for(for_unit(settings, h2, first=False).state_dir))
    assert left is not None, "h2's journal is gone"
    return left.record.committed


def strike_h2(
    service: Service, two_hosts: TwoHosts, phase: str, fault: Callable[[], None], **options: Any
) -> Struck:
    """A rollout with ``fault`` struck as h2's ``phase`` begins, h2's production port probed
    (``options`` as for :func:`deploy_with_fault`)."""
    return deploy_with_fault(
        service,
        phase,
        fault,
        url=f"http://{HOST2}:{HOST2_PORT}/api/brain/hardening/status",
        serving=two_hosts.serving2,
        step=phase,
        host="h2",
        **options,
    )


def h2_rolled_back_because(run: Run) -> str:
    """Why h2 rolled back 1.0.0 -> 2.0.0, as its line in the rollout's report says."""
    rolled = re.search(r"h2\s+rolled-back\s+1\.0\.0 -> 2\.0\.0: (.*)$", run.stderr, re.M)
    assert rolled, run.stderr
    return rolled[1]


# Every phase of h2's own deploy: the build and migrations run on the canary only.
REMOTE_PHASES = [phase for phase in FAULT_PHASES if phase != "build"]


@pytest.mark.parametrize("phase", REMOTE_PHASES)
def test_a_remote_host_whose_network_goes_away_is_recovered_when_it_comes_back(
    service: Service, two_hosts: TwoHosts, phase: str
) -> None:
    """ru-host2's link goes down as a phase of its deploy begins (tcp+TLS engine): the
    rollout ends by its deadlines with exit 3 (4 past h2's commit, in its cleanup) naming
    the host and what to run, the canary keeping the new version; once the link is back,
    `recover --host h2` leaves h2 one serving production container, no redirect, journal
    or mark: its old version, or the new one where its journal says committed."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config(
        engine2="tls",
        extra="[engine]\ncall_timeout = 2\n\n",
        rollback="step_timeout = 6\ntimeout = 20\n",
        tick=FAULT_TICK,
        verify="timeout = 10\nsoak = 3\n",
    )
    service.write_app("2.0.0")
    with service.cli("deploy", timeout=240) as cli:
        cli.until_event("deploy.step.started", step=phase, host="h2")
        with host2_unplugged():
            run = cli.finish()
    committed = h2_committed(service)
    assert committed == (phase == "cleanup"), phase
    # Past its commit, h2 serves the new version: the cleanup is what is left to finish.
    assert run.code == (4 if committed else 3), run.tail()
    assert service.serving() == "2.0.0"
    h2_version = recovered_h2(service, two_hosts, run, committed=committed)
    print(
        f"\nOUTCOME fault=h2-link-down phase={phase} exit={run.code} seconds={run.seconds:.1f}"
        f" committed={committed} recover=0 h2={h2_version} line={run.stderr.strip()[-200:]!r}"
    )


def recovered_h2(service: Service, two_hosts: TwoHosts, run: Run, *, committed: bool) -> str:
    """A rollout that left h2 part-way says to run `recover --host h2`, which exits 0 and
    leaves both hosts settled, h2 on the new version if its journal said committed, else
    the old: that version."""
    assert "h2: " in run.stderr and "`rolling-update recover --host h2`" in run.stderr, run.stderr
    fixed = service.run("recover", "--host", "h2", timeout=240)
    assert fixed.code == 0, fixed.tail()
    h2_version = "2.0.0" if committed else "1.0.0"
    assert_both_settled(service, two_hosts, h2_version, fixed.tail())
    return h2_version


def assert_both_settled(service: Service, two_hosts: TwoHosts, h2_version: str, why: str) -> None:
    """The canary serves the new version, h2 ``h2_version``, each from one running production
    container, with no helper, redirect, journal or engine mark left on either host."""
    assert service.serving() == "2.0.0"
    assert two_hosts.serving2() == h2_version, why
    assert service.containers() == [service.name]
    assert two_hosts.containers2() == [service.name], why
    # Nor a helper container a deploy cut short left behind: recover removes it.
    assert docker2("ps", "-aq", "--filter", "label=io.rolling-update.role=helper") == "", why
    assert docker2("inspect", "--format", "{{.State.Status}}", service.name) == "running"
    assert not service.redirected() and not two_hosts.redirected2()
    settings = service.settings()
    for unit in units_of(settings):
        journal = Journal.path_for(for_unit(settings, unit, first=False).state_dir)
        assert not journal.exists(), unit.name
    assert not service.marked()
    assert not docker2("volume", "ls", "-q", "--filter", f"name={service.marker}")


@pytest.fixture(params=[False, True], ids=["no-live-restore", "live-restore"])
def host2_engine(request: pytest.FixtureRequest) -> bool:
    """ru-host2's dockerd running with the live-restore setting of the case."""
    live_restore: bool = request.param
    ensure_host2_engine(live_restore=live_restore)
    return live_restore


@pytest.mark.parametrize("phase", REMOTE_PHASES)
def test_a_remote_engine_restart_mid_rollout_ends_with_both_hosts_serving(
    host2_engine: bool, service: Service, two_hosts: TwoHosts, phase: str
) -> None:
    """ru-host2's dockerd restarting (ssh engine) during any phase of its deploy ends with
    each host serving from one production container, no redirect, journal or engine mark,
    and a true exit code: 0 (h2 deployed), or 1 naming h2 (h2 rolled back; the canary keeps
    the new version); with live-restore nothing on h2 stops: not one request to it fails,
    and the deploy rides through but where a call of the redirect or switch is cut."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config(tick=FAULT_TICK, verify="timeout = 20\nsoak = 4\n")
    service.write_app("2.0.0", knobs={"BOOT_DELAY": 2})
    out = strike_h2(
        service, two_hosts, phase, lambda: restart_host2_engine(live_restore=host2_engine)
    )
    run = out.run
    assert run.code in (0, 1, 4), run.tail()
    if run.code == 1:
        assert "h2" in run.stderr, run.stderr
    if run.code == 4:
        fixed = service.run("recover", "--host", "h2", timeout=240)
        assert fixed.code == 0, fixed.stderr
    h2_version = "1.0.0" if run.code == 1 else "2.0.0"
    assert_both_settled(service, two_hosts, h2_version, run.tail())
    print(
        f"outcome: h2 engine restart, live-restore {host2_engine}, {phase}: exit {run.code}, "
        f"local 2.0.0, h2 {h2_version}, h2 {out.failures} failed, dark {out.dark:g}s; "
        f"{run.stderr.strip()[-300:]!r}"
    )
    if host2_engine:
        assert out.failures == 0, run.tail()
        # The redirect and the switch make calls the restart can cut mid-flight (exit 1).
        if phase not in ("handoff", "switch"):
            assert run.code == 0, run.tail()


@pytest.mark.parametrize("phase", REMOTE_PHASES)
def test_a_remote_host_rebooting_mid_rollout_is_recovered(
    service: Service, two_hosts: TwoHosts, phase: str
) -> None:
    """ru-host2 reboots during its deploy (its engine stopped, every container with it, the
    tool's nftables table there forgotten, the engine started again) while the tool dies
    with the operator's session: `recover` leaves each host one serving production
    container, h2 on its old version, or the new one where its journal says committed."""
    ensure_host2_engine(live_restore=False)
    two_hosts.start_blues("1.0.0")
    two_hosts.config(tick=FAULT_TICK, verify="timeout = 20\nsoak = 4\n")
    service.write_app("2.0.0", knobs={"BOOT_DELAY": 2})
    with Prober(f"http://{HOST2}:{HOST2_PORT}/api/brain/hardening/status") as prober:
        with service.cli("deploy", timeout=240) as cli:
            cli.until_event("deploy.step.started", step=phase, host="h2")
            cli.signal(signal.SIGKILL)
            reboot_host2(service.name)
            killed = cli.finish()
        assert killed.code == -signal.SIGKILL
        committed = h2_committed(service)
        assert committed == (phase == "cleanup"), phase
        fixed = service.recover()
    assert fixed.code == 0, fixed.tail()
    h2_version = "2.0.0" if committed else "1.0.0"
    assert_both_settled(service, two_hosts, h2_version, fixed.tail())
    print(
        f"outcome: h2 reboot, {phase}, recover: exit {fixed.code}, local 2.0.0, h2 {h2_version}, "
        f"h2 {prober.failures} failed, dark {prober.longest_gap(to_end=True):.2f}s"
    )


@pytest.fixture
def host2_proxy() -> Iterator[EngineProxy]:
    """A proxy in front of ru-host2's engine socket, which the tool reaches over SSH; the
    test's own ``docker2()`` calls still go straight to the engine."""
    with proxied(HOST2_SOCKET) as proxy:
        yield proxy


@pytest.mark.parametrize("comes_back", [True, False], ids=["back-after-a-while", "never-back"])
@pytest.mark.parametrize(
    "phase", ["green-health", "tick-boundary", "handoff", "switch", "verify", "soak", "cleanup"]
)
def test_a_remote_engine_hanging_mid_rollout(
    service: Service, two_hosts: TwoHosts, host2_proxy: EngineProxy, phase: str, comes_back: bool
) -> None:
    """ru-host2's engine stalls (its SSH link up) as a phase of its deploy begins: an engine
    that answers again 4 s later gets h2 rolled back (exit 1 naming h2); one that never does
    gets exit 3 by the rollback's deadlines, and `recover --host h2` once it answers. Past
    h2's commit (its cleanup) the removals are asked again until it answers (exit 0), or,
    past the cleanup's budget, exit 4 and `recover --host h2` finishes. The canary keeps
    the new version, each host is left one serving production container, no redirect,
    journal or mark: h2 on its old version, or the new one where its journal says committed."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config(
        socket2=str(host2_proxy.path),
        engine=f"call_timeout = {CALL_TIMEOUT}\n",
        rollback="step_timeout = 8\ntimeout = 20\n",
        tick=FAULT_TICK,
        # A soak long enough for an unanswered call to fail inside it.
        verify="timeout = 10\nsoak = 6\n",
    )
    service.write_app("2.0.0")

    def hang() -> None:
        host2_proxy.stall()
        later(host2_proxy, comes_back)

    out = strike_h2(service, two_hosts, phase, hang, timeout=BOUND)
    run = out.run
    committed = False
    if phase == "cleanup" and comes_back:
        # Asked again within the cleanup's budget, h2's removals land once it answers.
        assert run.code == 0, run.tail()
    elif phase == "cleanup":
        committed = h2_committed(service)
        assert committed, phase
        assert run.code == 4, run.tail()
    elif comes_back:
        assert run.code == 1, run.tail()
    else:
        assert run.code == 3, run.tail()
        assert not h2_committed(service), phase
    # A hung engine stops no container: h2's port never goes dark.
    assert out.failures == 0, run.tail()
    if run.code != 0:
        assert "h2" in run.stderr.strip().splitlines()[-1], run.stderr
    if run.code in (0, 1):
        h2_version = "1.0.0" if run.code == 1 else "2.0.0"
        assert_both_settled(service, two_hosts, h2_version, run.tail())
    else:
        host2_proxy.pass_()
        h2_version = recovered_h2(service, two_hosts, run, committed=committed)
    print(
        f"\nOUTCOME fault=h2-engine-stall phase={phase}"
        f" back={'after' if comes_back else 'never'} exit={run.code}"
        f" seconds={run.seconds:.1f} recover={'-' if run.code in (0, 1) else 0}"
        f" h2={h2_version} failed={out.failures} of={out.probes} dark={out.dark:.2f}"
        f" line={run.stderr.strip()[-200:]!r}"
    )


@pytest.fixture
def host2_memory(service: Service) -> Iterator[Callable[..., None]]:
    """``limit(room_mb, of=name)``: the memory of every container on ru-host2 limited to
    what they use now plus ``room_mb`` MiB, as that host's RAM (found through container
    ``of``'s process, running: blue's by default; mid-switch, blue's name may be a created
    production container's); lifted after the case, whatever it did."""

    def limit(room_mb: int, *, of: str | None = None) -> None:
        pid = int(docker2("inspect", "--format", "{{.State.Pid}}", of or service.name))
        faults.limit_memory(pid, room_mb, HOST2_CGROUP)

    try:
        yield limit
    finally:
        faults.unlimit_memory(HOST2_CGROUP)


# Who grows past the room at each phase of h2's deploy: green while it is a candidate or
# serves production's port through the redirect, production once it serves alone.
H2_GROWS = {
    "green-health": "green",
    "tick-boundary": "green",
    "handoff": "green",
    "switch": "green",
    "verify": "green",
    "soak": "production",
    "cleanup": "production",
}


@pytest.mark.parametrize("phase", list(H2_GROWS))
def test_the_second_host_out_of_memory_mid_rollout(
    service: Service, two_hosts: TwoHosts, host2_memory: Callable[..., None], phase: str
) -> None:
    """ru-host2 runs out of memory in a phase of its deploy, green or its new production
    container growing far past the room (green in its warm-up by itself, under a limit set
    before): the kernel kills it there, as its SSH engine's events say, and h2 ends with one
    production container serving, no redirect, journal or mark: rolled back alone (exit 1,
    h2's line saying which was OOM-killed, or that production gave no answer in the soak,
    where the kernel stalled it for seconds first), or, in its cleanup past its commit,
    deployed (exit 0: the restart policy brings production back). The canary keeps the new
    version."""
    two_hosts.start_blues("1.0.0")
    # In its warm-up h2's green grows by itself (its own env's knobs), booting for 30 s.
    warming = {"MEMORY_MB": 200, "ALLOC_MB_AFTER": 0.5, "BOOT_DELAY": 30}
    two_hosts.config(
        tick=FAULT_TICK,
        verify="timeout = 20\nsoak = 8\n",
        env2=warming if phase == "green-health" else None,
    )
    service.write_app("2.0.0", knobs={"SHUTDOWN_DELAY": 2} if phase == "cleanup" else {})
    grows = H2_GROWS[phase]
    name, port = (service.green, HOST2_GREEN) if grows == "green" else (service.name, HOST2_PORT)
    since = f"{time.time():.3f}"
    if phase == "green-health":
        host2_memory(80)

    def grow() -> None:
        if phase != "green-health":
            host2_memory(80, of=name)
            get_json(f"http://{HOST2}:{port}/__standin/alloc?mb=160", timeout=5)

    out = strike_h2(service, two_hosts, phase, grow)
    run = out.run
    deaths = docker2(
        "events", "--since", since, "--until", f"{time.time():.3f}",
        "--filter", "type=container", "--filter", "event=die", "--filter", f"container={name}",
        "--format", "{{.Actor.Attributes.exitCode}}",
    )  # fmt: skip
    assert "137" in deaths.split(), deaths
    line = ""
    # Before h2's commit a death missed would leave nothing serving: exit 1. Green grown
    # from the redirect on may die after its release handed the port back to production,
    # when it serves nothing (as it does in 1 run of 2 at verify): 0 is then the truth.
    allowed = {"cleanup": (0,), "handoff": (0, 1), "switch": (0, 1), "verify": (0, 1)}
    assert run.code in allowed.get(phase, (1,)), run.tail()
    if run.code == 1:
        line = h2_rolled_back_because(run)
        stalled = f"{service.name} turned unhealthy during the 8s soak: no answer within"
        assert "was OOM-killed (SIGKILL, exit 137" in line or stalled in line, line
    assert_both_settled(service, two_hosts, "1.0.0" if run.code else "2.0.0", run.tail())
    print(
        f"\nOUTCOME fault=h2-out-of-memory phase={phase} grows={grows} exit={run.code}"
        f" seconds={run.seconds:.1f} failed={out.failures} of={out.probes} dark={out.dark:.2f}"
        f" line={line!r}"
    )


@pytest.fixture
def host2_disk() -> Iterator[Callable[..., None]]:
    """``fill(leave_mb=0)``: ru-host2's data root filled, leaving ``leave_mb`` MiB (0: to
    its last block); freed after the case, whatever it did."""

    def fill(leave_mb: int = 0) -> None:
        faults.fill(leave_mb=leave_mb, disk=HOST2_DISK)

    root = docker2("info", "--format", "{{.DockerRootDir}}")
    assert root == str(HOST2_DISK / "docker"), f"{root}: run scripts/test-hosts.sh"
    try:
        yield fill
    finally:
        faults.free(HOST2_DISK)


# How h2's deploy ends with its disk full from a phase on: the helper container a change
# of its nft table runs in is refused, so once the redirect is in place (switch, verify)
# the rollback cannot remove it (3), unless a container it removed first freed the blocks
# a helper needs (1: the new production, dead at the verify). The disk filled as the
# redirect begins may land before its helper is made (1) or just after.
H2_DISK_FULL = {
    "green-health": (1,),
    "tick-boundary": (1,),
    "handoff": (1, 3),
    "switch": (1, 3),
    "verify": (1, 3),
    "soak": (0,),
    "cleanup": (0,),
}


@pytest.mark.parametrize("phase", list(H2_DISK_FULL))
def test_the_second_host_disk_full_mid_rollout(
    service: Service, two_hosts: TwoHosts, host2_disk: Callable[..., None], phase: str
) -> None:
    """ru-host2's data root fills to its last block as a phase of its deploy begins: not one
    request to h2 fails, and h2 ends with one production container serving: the new version
    (exit 0) where what is left needs no room, the old one (exit 1, h2's line with its
    engine's "no space left on device", or a container that could not write and exited;
    a redirect whose helper the engine refused never ran, and is not undone); where the
    redirect in place cannot be removed, exit 3 naming `recover --host h2`, which, once
    there is room, settles h2. The canary keeps the new version; nothing else is left."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config(tick=FAULT_TICK, verify="timeout = 20\nsoak = 4\n")
    service.write_app("2.0.0", knobs={"BOOT_DELAY": 2})
    out = strike_h2(service, two_hosts, phase, host2_disk)
    run = out.run
    assert run.code in H2_DISK_FULL[phase], run.tail()
    assert out.failures == 0, run.tail()
    line = run.stderr.strip().splitlines()[-1] if run.code else ""
    if run.code == 1:
        line = h2_rolled_back_because(run)
        assert re.search(REFUSED, line) or " exited with code 1 while " in line, line
    if run.code == 3:
        committed = h2_committed(service)
        assert not committed, run.stderr
        faults.free(HOST2_DISK)
        h2_version = recovered_h2(service, two_hosts, run, committed=committed)
    else:
        h2_version = "1.0.0" if run.code == 1 else "2.0.0"
        assert_both_settled(service, two_hosts, h2_version, run.tail())
    print(
        f"\nOUTCOME fault=h2-disk-full phase={phase} exit={run.code} seconds={run.seconds:.1f}"
        f" h2={h2_version} failed={out.failures} of={out.probes} dark={out.dark:.2f}"
        f" line={line[-300:]!r}"
    )


@pytest.mark.parametrize(
    ("distribute", "leave_mb"), [("stream", 64), ("registry", 0)], ids=["stream", "registry"]
)
def test_the_image_copy_into_a_full_data_root_stops_before_the_host(
    service: Service,
    two_hosts: TwoHosts,
    host2_disk: Callable[..., None],
    distribute: str,
    leave_mb: int,
) -> None:
    """ru-host2's data root is (nearly) full as the new image is copied there: streamed from
    the canary (its engine stores the whole stream before it loads it: the stream is cut
    once 64 MiB are written) or pulled from the registry (its new layer): the copy fails, so
    the rollout stops before h2 changes (exit 1, h2 refused, its engine's "no space left on
    device" in the line), the canary keeps the new version and h2 its old one, untouched;
    once there is room, the next deploy finishes h2."""
    if distribute == "registry":
        image = through_registry(service, two_hosts)
        environ = {"DOCKER_CONFIG": str(service.workdir / "docker-config")}
        (service.workdir / "docker-config").mkdir()
    else:
        two_hosts.start_blues("1.0.0")
        two_hosts.config()
        service.write_app("2.0.0")
        image, environ = service.repo, {}
    try:
        with (
            Prober(f"http://{HOST2}:{HOST2_PORT}/api/brain/hardening/status") as prober,
            service.cli("deploy", timeout=300, environ=environ) as cli,
        ):
            # The canary's cleanup is the last thing before h2's copy.
            cli.until_event("deploy.step.started", step="cleanup", host="local")
            host2_disk(leave_mb)
            run = cli.finish()
        assert run.code == 1, run.tail()
        assert re.search(r"h2\s+refused\s.*no space left on device", run.stderr), run.stderr
        copied = run.event("image.copied") + run.event("image.pulled")
        assert not [e for e in copied if e.get("host") == "h2"], copied
        assert docker2("image", "ls", "-q", f"{image}:2.0.0") == ""
        assert service.serving() == "2.0.0" and two_hosts.serving2() == "1.0.0"
        assert service.containers() == [service.name]
        assert two_hosts.containers2() == [service.name]
        assert not two_hosts.redirected2() and not service.marked()
        assert prober.failures == 0, prober.errors
        print(
            f"\nOUTCOME fault=h2-disk-full phase=image-copy via={distribute} exit={run.code}"
            f" seconds={run.seconds:.1f} failed={prober.failures} of={len(prober.samples)}"
            f" line={run.stderr.strip()[-300:]!r}"
        )
        faults.free(HOST2_DISK)
        again = service.deploy(timeout=300, environ=environ)
        assert again.code == 0, again.tail()
        assert (service.serving(), two_hosts.serving2()) == ("2.0.0", "2.0.0")
    finally:
        if distribute == "registry":
            docker("rmi", "-f", f"{image}:2.0.0", check=False)
            docker2("rmi", "-f", f"{image}:2.0.0", check=False)
