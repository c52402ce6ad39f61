"""Green and the new production container are blue's twin: compared field by field in inspect.

Blue is created the way the reference service's docker-compose.yml creates it
(pid host, read-only root, tmpfs, a credentials bind mount, limits, log
rotation, compose labels, a healthcheck, TZ and BRAIN_PORT), and on a
user-defined bridge network with a published port, an alias, DNS, extra
hosts and a sysctl.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Service, docker

pytestmark = pytest.mark.docker

HEALTHCHECK = (
    "python3 -c \"import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' "
    "+ os.environ['PORT'] + '/api/brain/health', timeout=2)\""
)
# Config keys the tool sets itself: the only env that may differ from blue's.
TOOL_ENV = {"PORT", "ENV_REGION"}


def env_of(inspect: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in inspect["Config"]["Env"])


def compose_flags(service: Service, creds: Path) -> list[str]:
    return [
        "--network", "host",
        "--pid", "host",
        "--restart", "unless-stopped",
        "--read-only",
        "--tmpfs", "/tmp:size=100M",
        "-v", f"{creds}:/run/creds:ro",
        "--memory", "256m",
        "--cpus", "1.5",
        "--log-driver", "json-file",
        "--log-opt", "max-size=10m",
        "--log-opt", "max-file=3",
        "--label", "com.docker.compose.project=cecelia",
        "--label", "com.docker.compose.service=node-brain",
        "--label", "com.docker.compose.container-number=1",
        "--health-cmd", HEALTHCHECK,
        "--health-interval", "1s",
        "--health-timeout", "2s",
        "--health-retries", "3",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--ulimit", "nofile=4096:8192",
        "--init",
        "--shm-size", "128m",
        "--group-add", "10",
        "--stop-signal", "SIGTERM",
        "--stop-timeout", "7",
        "--workdir", "/app",
        "-e", "TZ=Asia/Shanghai",
        "-e", f"BRAIN_PORT={service.port}",
    ]  # fmt: skip


def assert_twin(blue: dict[str, Any], new: dict[str, Any], *, port: int) -> None:
    """Only the image, the name, labels, the tool's env (and green's published port) differ."""
    host_before, host_after = dict(blue["HostConfig"]), dict(new["HostConfig"])
    if new["Name"].endswith("-green"):
        # Green never restarts by itself: a daemon restart must not bring it back.
        assert host_after.pop("RestartPolicy")["Name"] == "no"
        host_before.pop("RestartPolicy")
    if port != int(env_of(blue)["PORT"]):
        host_before.pop("PortBindings"), host_after.pop("PortBindings")
    assert host_after == host_before
    for key in ("User", "WorkingDir", "Healthcheck", "StopSignal", "StopTimeout", "Cmd", "Tty"):
        assert new["Config"].get(key) == blue["Config"].get(key), key
    # APP_VERSION comes from each image; everything else the operator set is kept as it was.
    ignored = TOOL_ENV | {"APP_VERSION"}
    before, after = env_of(blue), env_of(new)
    assert {k: v for k, v in after.items() if k not in ignored} == {
        k: v for k, v in before.items() if k not in ignored
    }
    assert after["PORT"] == str(port)


def deploy_inspecting_green(service: Service) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Deploy, inspecting green while it runs; returns green, production and the JSON log."""
    service.config(tick="settle = 2\nguard = 1\ninterval = 0.1\ntimeout = 30\n")
    with service.cli("deploy", timeout=120) as deploy:
        deploy.until_event("deploy.step.started", step="tick-boundary")
        green = service.inspect(service.green)
        run = deploy.finish()
    assert run.code == 0, run.stderr
    return green, service.inspect(service.name), run.stdout


def compose_labels(inspect: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = inspect["Config"]["Labels"]
    return {k: v for k, v in labels.items() if k.startswith("com.docker.compose.")}


def test_host_network_twin_keeps_everything_the_operator_set(
    service: Service, tmp_path: Path
) -> None:
    """Compose-made blue: green and production match it in inspect; the new image's ENV wins."""
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "token").write_text("t0k3n")
    service.start_blue(
        "1.0.0",
        args=compose_flags(service, creds),
        dockerfile_extra="ENV APP_VERSION=1.0.0\nLABEL org.example.release=1.0.0",
    )
    blue = service.inspect(service.name)
    service.write_app(
        "2.0.0", dockerfile_extra="ENV APP_VERSION=2.0.0\nLABEL org.example.release=2.0.0"
    )
    green, production, out = deploy_inspecting_green(service)

    assert_twin(blue, production, port=service.port)
    assert_twin(blue, green, port=service.green_port)
    assert env_of(production)["APP_VERSION"] == "2.0.0"  # the image's, not blue's old one
    assert production["Config"]["Labels"]["org.example.release"] == "2.0.0"
    assert compose_labels(production) == compose_labels(blue) != {}
    assert compose_labels(green) == {}  # compose would count it as a second replica
    assert production["State"]["Health"]["Status"] in ("starting", "healthy")
    assert '"twin.diff"' in out and "Env: ~BRAIN_PORT" not in out


@pytest.fixture
def network() -> Iterator[str]:
    name = f"rutest-net-{uuid.uuid4().hex[:8]}"
    docker("network", "create", name)
    yield name
    docker("network", "rm", name, check=False)


def test_bridge_network_twin_publishes_green_on_its_own_port(
    service: Service, network: str
) -> None:
    """On a user-defined network: published port, alias, DNS, hosts, sysctl carry over."""
    flags = [
        "--network", network,
        "--network-alias", "brain",
        "--restart", "unless-stopped",
        "-p", f"127.0.0.1:{service.port}:{service.port}",
        "--dns", "192.0.2.53",
        "--add-host", "db.internal:192.0.2.10",
        "--sysctl", "net.ipv4.tcp_keepalive_time=600",
    ]  # fmt: skip
    service.start_blue("1.0.0", args=flags, dockerfile_extra="ENV APP_VERSION=1.0.0")
    blue = service.inspect(service.name)
    service.write_app("2.0.0", dockerfile_extra="ENV APP_VERSION=2.0.0")
    green, production, out = deploy_inspecting_green(service)
    # Published on loopback, the port is handed over on a user-defined network too.
    assert '"handoff.redirect"' in out and '"switch.mode"' not in out
    assert service.serving() == "2.0.0"

    assert_twin(blue, production, port=service.port)
    assert_twin(blue, green, port=service.green_port)
    published = {"HostIp": "127.0.0.1", "HostPort": str(service.green_port)}
    assert green["HostConfig"]["PortBindings"] == {f"{service.green_port}/tcp": [published]}
    aliases = production["NetworkSettings"]["Networks"][network]["Aliases"]
    assert "brain" in aliases
    assert "brain" not in (green["NetworkSettings"]["Networks"][network]["Aliases"] or [])


def test_a_twin_that_cannot_run_beside_blue_is_refused_before_anything(service: Service) -> None:
    """Blue publishing a second fixed host port: the preflight names the field, exit 2."""
    other = service.green_port + 1 if service.green_port < 65000 else 40000
    flags = [
        "--restart", "unless-stopped",
        "-p", f"127.0.0.1:{service.port}:{service.port}",
        "-p", f"127.0.0.1:{other}:9000",
    ]  # fmt: skip
    service.start_blue("1.0.0", args=flags)
    service.write_app("2.0.0")
    service.config()
    run = service.deploy()
    assert run.code == 2, run.stderr
    assert f"HostConfig.PortBindings 9000/tcp -> host port {other}" in run.stderr
    assert "nothing was changed" in run.stderr
    assert run.event("deploy.step.started") == []


def test_a_green_docker_calls_unhealthy_is_rolled_back(service: Service) -> None:
    """The new image's HEALTHCHECK fails: green answers HTTP healthy, yet the deploy rolls back."""
    service.start_blue("1.0.0")
    service.write_app(
        "2.0.0", dockerfile_extra="HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD false"
    )
    service.config(tick="settle = 5\nguard = 1\ninterval = 0.1\ntimeout = 30\n")
    run = service.deploy()
    assert run.code == 1, run.stderr
    assert f"{service.green} is unhealthy by its Docker healthcheck" in run.stderr
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]
