"""The engine's disk and the host's memory running out, made for real on the fault engine.

Disk: the fault engine's data root is an ext4 filesystem of its own (tests/faults.py), filled
with one file at a phase of the deploy. Memory: every container of the fault engine sits
under one memory cgroup, whose limit stands for the host's RAM: blue fits alone, blue and
a growing new version do not, and the kernel's OOM killer picks its victim among them all
(blue, production, included). Each case asserts the exit code, the one line, and the host
left: what serves production's port, which containers exist, the redirect, the journal and
the engine's mark; a client probing production's port every 20 ms measures how long it
went unanswered.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import faults
from tests.support import Prober, Run, Service

pytestmark = [pytest.mark.docker, pytest.mark.faults]

# What the build writes: far more than the room a filled disk leaves.
BALLAST = "RUN sleep 2 && head -c 64M /dev/zero > /ballast"
LEFT_MB = 4


@pytest.fixture
def fault_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The fault engine running, every docker call pointed at it (requested before
    ``service``), and its disk freed again whatever the case did."""
    faults.start()
    monkeypatch.setenv("DOCKER_HOST", faults.HOST)
    try:
        yield
    finally:
        faults.free()


def one_line(run: Run) -> str:
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


def assert_serves_only(service: Service, version: str) -> None:
    """Exactly one production container, running and serving ``version``; nothing else of
    the tool's: no redirect, journal or engine mark."""
    assert service.serving() == version
    assert service.containers() == [service.name]
    assert service.inspect(service.name)["State"]["Status"] == "running"
    assert not service.redirected()
    assert not service.journal.exists() and not service.marked()


def rolled_back_then_deploys(service: Service, prober: Prober) -> None:
    """Blue served throughout and alone serves now; once the disk has room again, the next
    deploy deploys."""
    assert_serves_only(service, "1.0.0")
    assert prober.failures == 0
    faults.free()
    again = service.deploy()
    assert again.code == 0, again.tail()
    assert_serves_only(service, "2.0.0")


def report(fault: str, phase: str, run: Run, prober: Prober) -> None:
    """The outcome-table row of this case, for the README (pytest -s shows it)."""
    print(
        f"\nOUTCOME fault={fault} phase={phase} exit={run.code} seconds={run.seconds:.1f}"
        f" failed={prober.failures} of={len(prober.samples)}"
        f" dark={prober.longest_gap(to_end=True):.2f} line={run.stderr.strip()[-300:]!r}"
    )


def test_disk_full_during_the_build(fault_engine: None, service: Service) -> None:
    """The engine's data root fills as the build begins: the build fails, exit 1 with one
    line saying the disk is full, no container made, blue serves untouched; once there is
    room, the next deploy deploys."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", dockerfile_extra=BALLAST)
    service.config()
    with Prober(service.version_url()) as prober, service.cli("deploy", timeout=180) as cli:
        cli.until_event("deploy.step.started", step="build")
        faults.fill(leave_mb=LEFT_MB)
        run = cli.finish()
    report("disk full (engine)", "build", run, prober)
    assert run.code == 1, run.tail()
    line = one_line(run)
    assert "; the disk is full: " in line, line
    assert line.endswith("No space left on device (rolled back: the previous version serves)")
    rolled_back_then_deploys(service, prober)


def test_disk_full_before_the_migration(fault_engine: None, service: Service) -> None:
    """The engine's data root fills once the image is built, before the migration's one-off
    container: exit 1 with one line saying the disk is full, no container left, blue serves
    untouched; once there is room, the next deploy deploys."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config()
    with Prober(service.version_url()) as prober, service.cli("deploy", timeout=180) as cli:
        cli.until_event("deploy.step.started", step="migrate")
        faults.fill(leave_mb=0)
        run = cli.finish()
    report("disk full (engine)", "migrate", run, prober)
    assert run.code == 1, run.tail()
    line = one_line(run)
    assert "no space left on device" in line.lower(), line
    rolled_back_then_deploys(service, prober)
