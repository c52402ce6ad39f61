"""`init --from` on a running, compose-made blue writes a config that plan accepts and deploys."""

from __future__ import annotations

import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from tests.support import BASE_IMAGE, Cli, Run, Service, docker

pytestmark = pytest.mark.docker

COMPOSE = "/usr/bin/docker-compose"


def compose_blue(service: Service) -> Path:
    """Blue 1.0.0 made by docker compose, as the reference service's production is."""
    app = service.write_app("1.0.0")
    docker(
        "build", "-q", "--build-arg", f"BASE={BASE_IMAGE}", "-t", f"{service.repo}:1.0.0", str(app)
    )
    service.write_env_file({"DB_NAME": "brain"})
    compose = service.workdir / "docker-compose.yml"
    compose.write_text(
        "services:\n"
        "  node-brain:\n"
        f"    image: {service.repo}:1.0.0\n"
        f"    container_name: {service.name}\n"
        "    network_mode: host\n"
        "    restart: unless-stopped\n"
        "    env_file: [.env.docker]\n"
        "    environment:\n"
        f"      - PORT={service.port}\n"
        "      - TZ=Asia/Shanghai\n"
    )
    subprocess.run(
        [COMPOSE, "-p", service.name, "-f", str(compose), "up", "-d"],
        cwd=service.workdir,
        check=True,
        capture_output=True,
        timeout=120,
    )
    deadline = time.monotonic() + 20
    while service.serving() != "1.0.0":
        assert time.monotonic() < deadline, docker("logs", service.name, check=False)
        time.sleep(0.05)
    return compose


def init(service: Service, *args: str) -> Run:
    """``python -m rolling_update ARGS`` run in the service's directory, as init is."""
    with Cli(args, cwd=service.workdir, timeout=60) as cli:
        return cli.finish()


def test_init_from_a_compose_made_blue_writes_a_config_that_deploys(service: Service) -> None:
    """init reads name, port, env file and health from blue; plan accepts it; it deploys 2.0.0."""
    compose_blue(service)
    made = init(service, "init", "--from", service.name, "--context", "brain")
    assert made.code == 0, made.stderr
    assert "found by probing" in made.stderr and "from the compose file's env_file" in made.stderr
    path = service.workdir / "rolling-update.toml"
    text = path.read_text()
    data = tomllib.loads(text)
    assert data["service"]["name"] == service.name and data["service"]["port"] == service.port
    assert data["service"]["env_file"] == str(service.workdir / ".env.docker")
    assert data["health"]["path"] == "/api/brain/health"
    assert data["health"]["version_path"] == "/api/brain/hardening/status"
    assert all("#" in line for line in text.splitlines() if "=" in line and line[0] != "#")
    again = init(service, "init", "--from", service.name)
    assert again.code == 2 and "--force" in again.stderr
    assert path.read_text() == text
    # The state directory is per host by default; this test's own keeps it apart.
    path.write_text(text + f'\n[state]\ndir = "{service.workdir / "state"}"  # per test\n')
    service.write_app("2.0.0")
    plan = service.run("plan", timeout=60)
    assert plan.code == 0, plan.stderr
    assert "1.0.0 -> 2.0.0" in plan.stdout
    run = service.deploy()
    assert run.code == 0, run.stderr
    assert service.serving() == "2.0.0"
    production = service.inspect(service.name)
    assert "TZ=Asia/Shanghai" in production["Config"]["Env"]


def test_init_names_what_it_could_not_find(service: Service) -> None:
    """A health path that does not answer 200 is refused, naming it; nothing is written."""
    compose_blue(service)
    made = init(service, "init", "--from", service.name, "--health", "/nope")
    assert made.code == 2 and "/nope did not answer 200" in made.stderr
    assert not (service.workdir / "rolling-update.toml").exists()
