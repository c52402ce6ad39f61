"""End to end on the real engine: `python -m rolling_update deploy` against real containers.

Every test asserts what serves the production port afterwards and which
containers exist; the failure cases also prove that blue served throughout.
"""

from __future__ import annotations

import socket
import time

import pytest

from rolling_update._engine.model import LABEL_MANAGED, LABEL_ROLE, LABEL_SERVICE, LABEL_VERSION
from tests.support import BASE_IMAGE, DOCKER, Prober, Service, docker

pytestmark = pytest.mark.docker

SECRET = "s3cr3t-7f1b2c9d"


def test_happy_path_switches_to_the_new_version(service: Service) -> None:
    """v1 → v2: 5221 serves v2 from a container named, networked and configured as specified."""
    service.write_env_file({"SECRET_TOKEN": SECRET})
    blue_id = service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"ECHO_ENV": "SECRET_TOKEN"})
    service.config()
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    assert run.code == 0, run.stderr
    assert service.serving() == "2.0.0"
    assert service.containers() == [service.name]
    prod = service.inspect(service.name)
    assert prod["Id"] != blue_id
    assert prod["Config"]["Image"] == f"{service.repo}:2.0.0"
    assert prod["HostConfig"]["NetworkMode"] == "host"
    assert prod["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert not prod["HostConfig"]["Memory"] and not prod["HostConfig"]["NanoCpus"]
    env = dict(item.split("=", 1) for item in prod["Config"]["Env"])
    assert env["PORT"] == str(service.port)
    assert env["ENV_REGION"] == "us"
    assert env["SECRET_TOKEN"] == SECRET  # from --env-file
    assert "GREEN_ONLY" not in env  # [green.env] is green's alone
    assert prod["Config"]["Labels"][LABEL_VERSION] == "2.0.0"
    assert prober.versions == ["1.0.0", "2.0.0"]
    done = run.event("deploy.done")[0]
    assert done["health"]["status"] == "healthy"
    # The handoff (the default here) has no dark window: it reports its own figures.
    assert done["measured"]["handoff_failed_requests"] == 0 and done["measured"]["handoff_s"] > 0
    assert SECRET not in run.stdout + run.stderr
    green_logs = [e["line"] for e in run.event("container.log") if e["container"] == service.green]
    assert "SECRET_TOKEN=***" in green_logs  # the app printed its secret; the log blanked it


def test_green_runs_with_its_overrides_and_production_without(service: Service) -> None:
    """[green.env] reaches green only: green prints the override, production does not have it."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"ECHO_ENV": "GREEN_ONLY"})
    service.config(green_env='GREEN_ONLY = "warming-up"\n')
    run = service.deploy()
    assert run.code == 0, run.stderr
    lines = {
        e["container"]: e["line"] for e in run.event("container.log") if "GREEN_ONLY=" in e["line"]
    }
    assert lines[service.green] == "GREEN_ONLY=warming-up"
    assert lines[service.name] == "GREEN_ONLY="


def test_degraded_green_is_rolled_back(service: Service) -> None:
    """A green that answers 200 but "degraded" never gets traffic; blue serves throughout."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"HEALTH_STATUS": "degraded"})
    service.config(
        health='path = "/api/brain/health"\nexpect_json = { status = "healthy" }\n'
        "interval = 0.1\nattempts = 20\n",
    )
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    assert run.code == 1
    assert "status is 'degraded', expected 'healthy'" in run.stderr
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]
    assert prober.failures == 0 and prober.versions == ["1.0.0"]


def test_crashing_green_is_detected_from_engine_events(service: Service) -> None:
    """A green that exits is caught by its die event, long before the 60 s health deadline."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"CRASH_AFTER": 0.3, "BOOT_DELAY": 5})
    service.config(
        health='path = "/api/brain/health"\ninterval = 1\nattempts = 60\n',
    )
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    assert run.code == 1
    # The event path says "exited with code 3"; the deadline path would say "within 60s".
    assert f"{service.green} exited with code 3 while waiting for health" in run.stderr
    assert "crashing on purpose" in run.stderr  # the container's last log lines
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]
    assert prober.failures == 0


def test_failed_migration_blocks_the_deploy_before_green_exists(service: Service) -> None:
    """A migration exiting non-zero stops everything: no green is ever created, blue untouched."""
    blue_id = service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"MIGRATE_FAIL": 1})
    service.config()
    began = time.time()
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    assert run.code == 1
    assert "exited with code 1" in run.stderr and "relation already exists" in run.stderr
    assert service.created_since(began) == [service.migrate_name]
    assert service.containers() == [service.name]
    assert service.inspect(service.name)["Id"] == blue_id
    assert prober.failures == 0 and prober.versions == ["1.0.0"]


def test_failed_build_leaves_blue_untouched(service: Service) -> None:
    """A build error stops the deploy before any container is created."""
    blue_id = service.start_blue("1.0.0")
    service.write_app("2.0.0", dockerfile_extra="RUN exit 7")
    service.config()
    began = time.time()
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    assert run.code == 1
    assert "build of" in run.stderr and "failed" in run.stderr
    assert service.created_since(began) == []
    assert service.inspect(service.name)["Id"] == blue_id
    assert service.containers() == [service.name]
    assert prober.failures == 0


def test_first_deploy_without_a_blue_starts_production(service: Service) -> None:
    """With no production container yet, the deploy skips the tick wait and starts one."""
    service.write_app("1.0.0")
    service.config()
    run = service.deploy()
    assert run.code == 0, run.stderr
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]
    assert run.event("tick.skipped")


def test_external_build_command_builds_the_image(service: Service) -> None:
    """build.command runs in the config's directory with {image}; its output streams to the log."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    script = service.workdir / "scripts" / "brain-build.sh"
    script.parent.mkdir()
    script.write_text(
        f'#!/bin/sh\necho "building $1 (VERSION=$VERSION)"\n'
        f'exec {DOCKER} build -q --build-arg BASE={BASE_IMAGE} -t "$1" brain\n'
    )
    script.chmod(0o755)
    service.config(build='command = ["scripts/brain-build.sh", "{image}"]\n')
    run = service.deploy()
    assert run.code == 0, run.stderr
    assert f"building {service.repo}:2.0.0 (VERSION=2.0.0)" in [
        e["line"] for e in run.event("build.log")
    ]
    assert service.serving() == "2.0.0"


def test_failing_build_command_stops_the_deploy(service: Service) -> None:
    """A build command exiting non-zero is a failed build: exit 1, blue untouched."""
    blue_id = service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config(build='command = ["sh", "-c", "echo compiling; exit 4"]\n')
    run = service.deploy()
    assert run.code == 1
    assert "build command 'sh' exited with code 4" in run.stderr
    assert service.inspect(service.name)["Id"] == blue_id


def test_stale_green_from_an_earlier_run_is_replaced(service: Service) -> None:
    """A green of ours left running by a killed earlier run (holding green's port) is replaced."""
    service.start_blue("1.0.0")
    docker(
        "run",
        "-d",
        "--name",
        service.green,
        "--network",
        "host",
        "--label",
        f"{LABEL_MANAGED}=true",
        "--label",
        f"{LABEL_SERVICE}={service.name}",
        "--label",
        f"{LABEL_ROLE}=green",
        "-e",
        f"PORT={service.green_port}",
        f"{service.repo}:1.0.0",
    )
    service.write_app("2.0.0")
    service.config()
    run = service.deploy()
    assert run.code == 0, run.stderr
    assert service.serving() == "2.0.0"
    assert service.containers() == [service.name]


def test_foreign_container_with_green_name_is_left_alone(service: Service) -> None:
    """A container named like green but not made by us stops the deploy (exit 2), untouched."""
    service.start_blue("1.0.0")
    foreign = docker("run", "-d", "--name", service.green, f"{service.repo}:1.0.0", "sleep", "60")
    service.write_app("2.0.0")
    service.config()
    run = service.deploy()
    assert run.code == 2
    assert (
        f"a container named {service.green} exists and was not made by rolling_update" in run.stderr
    )
    assert run.event("deploy.step.started") == []
    assert service.inspect(service.green)["Id"] == foreign
    assert service.serving() == "1.0.0"


def test_port_taken_before_green_starts_exits_2(service: Service) -> None:
    """Green's port taken: the preflight says so before the build; exit 2, nothing changed."""
    service.start_blue("1.0.0")
    began = time.time()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", service.green_port))
        squatter.listen()
        service.write_app("2.0.0")
        service.config()
        run = service.deploy()
    assert run.code == 2
    assert f"port {service.green_port} (service.green_port) is already in use" in run.stderr
    assert "(nothing was changed)" in run.stderr
    assert run.event("deploy.step.started") == []
    assert docker("images", "-q", f"{service.repo}:2.0.0") == ""
    assert service.created_since(began) == []
    assert service.containers() == [service.name]
    assert service.serving() == "1.0.0"


def test_bad_config_touches_nothing_and_exits_2(service: Service) -> None:
    """A config error exits 2 with one line naming the key; no container is created."""
    service.start_blue("1.0.0")
    path = service.config()
    path.write_text(path.read_text().replace("stop_timeout = 5", "stop_timeout = 5\nbogus = 1"))
    began = time.time()
    run = service.deploy()
    assert run.code == 2
    assert "service.bogus: Extra inputs are not permitted" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert service.created_since(began) == []


def test_a_buildkit_only_dockerfile_builds_through_the_engines_buildkit(service: Service) -> None:
    """RUN --mount=type=cache fails on the classic builder; with BuildKit the deploy succeeds."""
    service.start_blue("1.0.0")
    extra = "RUN --mount=type=cache,target=/var/cache/app echo cached > /var/cache/app/x"
    service.write_app("2.0.0", dockerfile_extra=extra)
    service.config(
        build=f'context = "brain"\nargs = {{ BASE = "{BASE_IMAGE}" }}\ntimeout = 120\n'
        'builder = "auto"\ndocker_cli = "/usr/bin/docker"\n'
    )
    run = service.deploy()
    assert run.code == 0, run.stderr
    (chosen,) = run.event("build.builder")
    assert chosen["builder"] == "buildkit" and "/usr/bin/docker" in chosen["why"]
    assert service.serving() == "2.0.0"


def test_only_the_newest_built_images_are_kept(service: Service) -> None:
    """With build.keep = 2, three deploys leave the two newest images the tool built."""
    service.start_blue("1.0.0")
    for version in ("2.0.0", "3.0.0", "4.0.0"):
        service.write_app(version)
        service.config(
            build=f'context = "brain"\nargs = {{ BASE = "{BASE_IMAGE}" }}\ntimeout = 120\n'
            "keep = 2\n"
        )
        run = service.deploy()
        assert run.code == 0, run.stderr
    tags = docker("images", "--format", "{{.Tag}}", service.repo).split()
    # 1.0.0 was built by hand (no label of ours): never the tool's to prune.
    assert sorted(tags) == ["1.0.0", "3.0.0", "4.0.0"]
