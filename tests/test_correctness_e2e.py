"""Failures that left the service down, stuck or misreported, each reproduced on a real engine.

Each test is a case a review or a new user's run found (issue 7): it failed
before the fix. The README's fault table has a row for each.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.support import Barrier, Service, docker

pytestmark = pytest.mark.docker


def test_recover_keeps_the_new_version_when_blue_was_removed_by_hand(service: Service) -> None:
    """Killed while production boots, `-old` removed by hand: recover keeps the new one, exit 0."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config()
    assert service.deploy_interrupted("verify", signal.SIGKILL).code == -signal.SIGKILL
    docker("rm", "-f", service.old_name)
    run = service.recover()
    assert run.code == 0, run.stderr
    assert "no longer exists: kept the new version" in run.stderr
    assert service.serving() == "2.0.0"
    assert service.containers() == [service.name]
    assert not service.journal.exists() and not service.marked()


def test_rollback_to_a_degraded_blue_succeeds_and_the_next_deploy_runs(service: Service) -> None:
    """Blue found degraded, the switch fails: blue back degraded is a clean rollback (exit 1)."""
    service.start_blue("1.0.0", knobs={"HEALTH_STATUS": "degraded"})
    service.write_app("2.0.0", knobs={"FAIL_ON_PORT": service.port})
    service.config(verify="timeout = 2\nsoak = 0\n")
    run = service.deploy()
    assert run.code == 1, run.stderr
    assert "rolled back: the previous version serves" in run.stderr
    assert (service.health().get("status"), service.serving()) == ("degraded", "1.0.0")
    assert not service.journal.exists() and not service.marked()
    service.write_app("3.0.0")
    fixed = service.deploy()
    assert fixed.code == 0, fixed.stderr
    assert service.serving() == "3.0.0"


def test_recover_brings_back_a_degraded_blue(service: Service) -> None:
    """SIGKILL during the soak with blue degraded: recover restores blue as it was found."""
    service.start_blue("1.0.0", knobs={"HEALTH_STATUS": "degraded"})
    service.write_app("2.0.0")
    service.config(verify="timeout = 10\nsoak = 5\n")
    assert service.deploy_interrupted("soak", signal.SIGKILL).code == -signal.SIGKILL
    run = service.recover()
    assert run.code == 0, run.stderr
    assert (service.health().get("status"), service.serving()) == ("degraded", "1.0.0")
    assert service.containers() == [service.name]


def test_a_version_that_dies_after_its_first_healthy_answer_is_rolled_back(
    service: Service,
) -> None:
    """Healthy at first, dead 1.5 s later: caught by the soak, rolled back, exit 1."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"CRASH_ON_PORT": service.port, "CRASH_ON_PORT_AFTER": 1.5})
    service.config(verify="timeout = 10\nsoak = 4\n")
    run = service.deploy()
    assert run.code == 1, run.stderr
    # Whichever sees it first: the engine's die event, or the health probe refused.
    assert (
        f"{service.name} exited with code 3 while soaking" in run.stderr
        or f"{service.name} turned unhealthy during the 4s soak" in run.stderr
    )
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]


def _second_checkout(service: Service) -> Path:
    """A copy of the service's checkout elsewhere, and its config's path; a state dir of its
    own if the first has one."""
    other = service.workdir / "other-checkout"
    other.mkdir()
    shutil.copytree(service.workdir / "brain", other / "brain")
    shutil.copy(service.workdir / ".env.docker", other / ".env.docker")
    text = service.config_path.read_text()
    text = text.replace(str(service.workdir / "state"), str(other / "state"))
    path = other / service.config_path.name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("state", "message"),
    [
        # The default state directory is the host's: both checkouts share the lock.
        ("", "is locked by deploy"),
        # Even with state directories of their own, the engine's mark is shared.
        ("other", "marked on the Docker engine"),
    ],
    ids=["default-state-dir", "separate-state-dirs"],
)
def test_two_checkouts_cannot_deploy_one_service_at_once(
    service: Service, barrier: Barrier, state: str, message: str
) -> None:
    """A deploy from a second checkout of the same config exits 2 while the first runs."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    if state:
        service.config(migrate=barrier.migration())
    else:
        service.config(migrate=barrier.migration(), state="")
    second = _second_checkout(service)
    with service.cli("deploy") as first:
        # The first deploy waits at the barrier in its migrate step: locked and marked.
        first.until_event("container.log", line=Barrier.LINE)
        began = time.time()
        refused = service.run("deploy", config=second, timeout=60)
        created = service.created_since(began)
        barrier.release()
        rest = first.finish()
    assert refused.code == 2, refused.stderr
    assert message in refused.stderr and "nothing was changed" in refused.stderr
    assert f"(pid {first.pid} on " in refused.stderr
    assert created == []
    assert rest.code == 0, rest.stderr
    assert service.serving() == "2.0.0"


def test_an_interrupted_migration_gets_sigterm_and_its_grace(service: Service) -> None:
    """A migration past its deadline is stopped with SIGTERM (exit 42 here), not SIGKILL (137)."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"MIGRATE_SLEEP": 30})
    service.config(migrate='commands = [["python3", "/app/app.py", "migrate"]]\ntimeout = 1\n')
    began = time.time()
    run = service.deploy()
    assert run.code == 1, run.stderr
    assert "ran past 1s" in run.stderr
    assert run.event("migrate.interrupted")
    codes = service.events_since(
        began, "die", "{{.Actor.Attributes.exitCode}}", f"container={service.migrate_name}"
    )
    assert codes == ["42"]
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]


def test_removed_containers_take_their_anonymous_volumes(service: Service) -> None:
    """An image with a VOLUME: a deploy leaves no anonymous volume of green, migrate or blue."""
    service.write_app("1.0.0", dockerfile_extra='VOLUME ["/data"]')
    service.config()
    before = set(docker("volume", "ls", "-q").split())
    first = service.deploy()
    assert first.code == 0, first.stderr
    service.write_app("2.0.0", dockerfile_extra='VOLUME ["/data"]')
    second = service.deploy()
    assert second.code == 0, second.stderr
    production = service.inspect(service.name)
    kept = {m["Name"] for m in production["Mounts"] if m.get("Type") == "volume"}
    assert set(docker("volume", "ls", "-q").split()) - before == kept
