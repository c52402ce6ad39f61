"""Faults outside the tool's process, made for real on the fault engine (tests/faults.py).

The Docker engine restarts in the middle of a deploy, with and without live-restore, and
the host "reboots" (the engine stopped, so every container dies; the tool's nftables
table flushed; the engine started again, containers back by their restart policy; then
`recover`, as a boot unit runs it). Each case asserts the end state: the exit code,
which containers exist and run, the version production's port answers, no redirect and
no journal left, and how many requests a client on production's port saw fail.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator

import pytest

from rolling_update._handoff.nft import table_name
from tests import faults
from tests.support import (
    FAULT_PHASES,
    FAULT_TICK,
    Barrier,
    Cli,
    Prober,
    Service,
    Struck,
    deploy_with_fault,
)

pytestmark = [pytest.mark.docker, pytest.mark.faults]


@pytest.fixture(params=[False, True], ids=["no-live-restore", "live-restore"])
def fault_engine(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, fault_engine_swept: None
) -> Iterator[bool]:
    """The fault engine running with the live-restore setting of the case, and every docker
    call of the test and the tool pointed at it; requested before ``service``, so that the
    service is removed from it before DOCKER_HOST is restored."""
    live_restore: bool = request.param
    faults.ensure(live_restore=live_restore)
    monkeypatch.setenv("DOCKER_HOST", faults.HOST)
    yield live_restore
    # A case that failed mid-fault must not leave it stopped for the next.
    faults.start(live_restore=live_restore)


@pytest.fixture
def reboot_engine(monkeypatch: pytest.MonkeyPatch, fault_engine_swept: None) -> Iterator[None]:
    """The fault engine as a host's engine that a reboot stops (no live-restore: a reboot
    stops every container anyway), everything pointed at it (requested before ``service``)."""
    faults.ensure(live_restore=False)
    monkeypatch.setenv("DOCKER_HOST", faults.HOST)
    yield
    faults.start(live_restore=False)


# The build runs a step of its own for this long, so that a fault sent at its start
# lands inside it.
SLOW_BUILD = "RUN sleep 6"


def prepared(
    service: Service, *, soak: float = 4, build: str = "", migrate: str | None = None
) -> None:
    """Blue v1 serving with restart policy unless-stopped (as the reference runs it); v2 to
    deploy; green boots in 2 s and the soak lasts ``soak`` s, so that a fault sent at a
    step's start lands inside it; ``build`` is added to v2's Dockerfile, ``migrate``
    replaces the config's migrations."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"BOOT_DELAY": 2}, dockerfile_extra=build)
    verify = f"timeout = 20\nsoak = {soak:g}\n"
    if migrate is None:
        service.config(tick=FAULT_TICK, verify=verify)
    else:
        service.config(tick=FAULT_TICK, verify=verify, migrate=migrate)


def states(service: Service) -> dict[str, str]:
    """Each of the service's containers by name, with its state."""
    return {name: str(service.inspect(name)["State"]["Status"]) for name in service.containers()}


def settled(service: Service, out: Struck) -> str:
    """The end state every case must reach, whatever the timing of the fault: a true exit
    code (0 or 4: the new version serves; 1: rolled back, the old one serves), one running
    production container, no redirect; `recover` finishing what an exit 4 left. Returns the
    case's row of the outcome table."""
    run = out.run
    assert run.code in (0, 1, 4), run.tail()
    expected = "1.0.0" if run.code == 1 else "2.0.0"
    assert service.serving() == expected, run.tail()
    if run.code == 4:
        left = service.journal_left()
        assert left is not None and left.committed
        assert service.recover().code == 0
    assert service.containers() == [service.name], (states(service), run.tail())
    assert states(service) == {service.name: "running"}
    assert not service.redirected() and not service.journal.exists() and not service.marked()
    return f"exit {run.code}, {expected} serves, {out.failures} failed, dark {out.dark:g}s"


@pytest.mark.parametrize("step", FAULT_PHASES)
def test_engine_restart_mid_deploy(fault_engine: bool, service: Service, step: str) -> None:
    """The engine restarting during any phase ends with one serving production container and
    a true exit code; with live-restore nothing stops, so not one request fails."""
    prepared(service, build=SLOW_BUILD if step == "build" else "")
    out = deploy_with_fault(service, step, lambda: faults.restart(live_restore=fault_engine))
    row = settled(service, out)
    print(f"outcome: engine restart, live-restore {fault_engine}, {step}: {row}")
    if fault_engine:
        assert out.failures == 0, out.run.tail()


def test_engine_restart_while_a_migration_runs(
    fault_engine: bool, service: Service, barrier: Barrier
) -> None:
    """The engine restarting while a migration command runs (held at the test's barrier
    until the engine is back) ends with one serving production container and a true exit
    code; with live-restore the migration runs on, is waited for again, and the deploy
    ends with the new version, not one request failed."""
    prepared(service, migrate=barrier.migration())

    def fault() -> None:
        faults.restart(live_restore=fault_engine)
        barrier.release()

    out = deploy_with_fault(service, "migrate", fault, event="container.log", line=Barrier.LINE)
    row = settled(service, out)
    print(f"outcome: engine restart, live-restore {fault_engine}, migrate: {row}")
    if fault_engine:
        assert out.run.code == 0 and out.failures == 0, out.run.tail()


def reboot(cli: Cli, service: Service) -> None:
    """The host goes down under the deploy and comes back: the tool dies with it, every
    container stops, the kernel forgets the nftables tables; the engine starts again and
    brings back what its restart policies say."""
    cli.signal(signal.SIGKILL)
    faults.stop()
    subprocess.run(
        ["nft", "delete", "table", "inet", table_name(service.name)],
        check=False,
        capture_output=True,
        timeout=10,
    )
    faults.start(live_restore=False)


@pytest.mark.parametrize("step", ["build", "migrate", *FAULT_PHASES[1:]])
def test_reboot_mid_deploy_then_recover(
    reboot_engine: None, service: Service, barrier: Barrier, step: str
) -> None:
    """A reboot at any phase (during the build, while a migration runs, and each phase
    after), then `recover` as a boot unit runs it: one production container serves the
    previous version, or the new one where the journal says the deploy was committed (the
    cleanup), and nothing of the deploy is left."""
    prepared(
        service,
        build=SLOW_BUILD if step == "build" else "",
        migrate=barrier.migration() if step == "migrate" else None,
    )
    with Prober(service.version_url()) as prober:
        with service.cli("deploy", timeout=240) as cli:
            if step == "migrate":
                cli.until_event("container.log", line=Barrier.LINE)
            else:
                cli.until_event("deploy.step.started", step=step)
            reboot(cli, service)
            killed = cli.finish()
        assert killed.code == -signal.SIGKILL
        left = service.journal_left()
        assert left is not None and left.committed == (step == "cleanup")
        recovered = service.recover()
    expected = "2.0.0" if left.committed else "1.0.0"
    assert recovered.code == 0, recovered.tail()
    assert service.serving() == expected
    assert states(service) == {service.name: "running"}
    assert not service.redirected() and not service.journal.exists() and not service.marked()
    print(
        f"outcome: reboot, {step}, recover: exit {recovered.code}, {expected} serves, "
        f"{prober.failures} failed, dark {prober.longest_gap(to_end=True):.2f}s"
    )
