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

import json
import re
import shlex
import time
from collections.abc import Callable, Iterator

import pytest

from tests import faults
from tests.support import (
    FAULT_TICK,
    MIGRATION_OOM_KILLED,
    Barrier,
    Prober,
    Run,
    Service,
    assert_rolled_back_untouched,
    assert_serves_only,
    deploy_with_fault,
    get_json,
    growing_migration,
    one_line,
    until,
)

pytestmark = [pytest.mark.docker, pytest.mark.faults]

# What the build writes: far more than the room a filled disk leaves.
BALLAST = "RUN sleep 2 && head -c 64M /dev/zero > /ballast"
LEFT_MB = 4
# How the engine words a write its full disk refused (a layer directory it could not make
# shows, a moment later, as one missing).
REFUSED = "(no space left on device|no such file or directory)"


@pytest.fixture
def fault_engine(monkeypatch: pytest.MonkeyPatch, fault_engine_swept: None) -> Iterator[None]:
    """The fault engine running, every docker call pointed at it (requested before
    ``service``), and its disk freed again whatever the case did."""
    faults.start()
    monkeypatch.setenv("DOCKER_HOST", faults.HOST)
    try:
        yield
    finally:
        faults.free()


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


def test_disk_full_as_the_migration_begins(fault_engine: None, service: Service) -> None:
    """The engine's data root fills to its last block as the migration step begins: its
    one-off container cannot be made or started (exit 1, the engine's error saying no
    space is left), or, when the room a removal frees lets it start, it fails (exit 1; its
    own lines, which the engine cannot store either, may be lost); no container is left,
    blue serves untouched; once there is room, the next deploy deploys."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config()
    with Prober(service.version_url()) as prober, service.cli("deploy", timeout=180) as cli:
        cli.until_event("deploy.step.started", step="migrate")
        faults.fill()
        run = cli.finish()
    report("disk full (engine)", "migrate, as it begins", run, prober)
    assert run.code == 1, run.tail()
    line = run.stderr.strip().splitlines()[0]
    engine_said = re.search(rf"docker (create|start) \S+ failed \(500\): .*{REFUSED} \(", line)
    assert engine_said or "migration 'python3 /app/app.py migrate' exited with code 1" in line
    assert line.endswith("(rolled back: the previous version serves)"), line
    rolled_back_then_deploys(service, prober)


def test_disk_full_while_a_migration_runs(
    fault_engine: None, service: Service, barrier: Barrier
) -> None:
    """The engine's data root fills while a migration command runs (held at the test's
    barrier), which then writes: exit 1, saying the disk is full with the command's own
    line, no container left, blue serves untouched; once there is room, the next deploy
    deploys."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    held = ["sh", "-c", f"{shlex.join(barrier.command)} && head -c 8M /dev/zero > /ballast"]
    service.config(migrate=f"commands = {json.dumps([held])}\ntimeout = 60\n")
    with Prober(service.version_url()) as prober, service.cli("deploy", timeout=180) as cli:
        cli.until_event("container.log", line=Barrier.LINE)
        faults.fill()
        barrier.release()
        run = cli.finish()
    report("disk full (engine)", "migrate, while it runs", run, prober)
    assert run.code == 1, run.tail()
    line = run.stderr.strip().splitlines()[0]
    assert "exited with code 1; the disk is full: head: error writing" in line, line
    assert line.endswith("No space left on device (rolled back: the previous version serves)")
    rolled_back_then_deploys(service, prober)


@pytest.mark.parametrize(
    "phase", ["green-health", "tick-boundary", "handoff", "switch", "verify", "soak", "cleanup"]
)
def test_disk_full_at_a_phase_past_the_migration(
    fault_engine: None, service: Service, phase: str
) -> None:
    """The engine's data root fills to its last block as a phase of the deploy past the
    migration begins: not one request fails, and the deploy ends with one production
    container serving: the new version (exit 0) where what is left to do needs no room,
    the old one (exit 1) where the engine could not write a container's config or layer
    (its own "no space left on device" in the line) or a container starting could not
    write and exited (its lines, which the engine cannot store, lost). Where blue, once
    stopped, cannot be started again (the engine writes its config to start it), green
    keeps serving behind the redirect and the deploy exits 3 saying to run `recover`,
    which, once there is room, brings blue back (exit 4 past the commit: the new
    version). Nothing else is left."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"BOOT_DELAY": 2})
    service.config(tick=FAULT_TICK, verify="timeout = 20\nsoak = 4\n")
    out = deploy_with_fault(service, phase, faults.fill)
    out.report("disk full (engine)", phase)
    run = out.run
    assert run.code in (0, 1, 3, 4), run.tail()
    assert out.failures == 0, run.tail()
    if run.code == 1:
        line = one_line(run)
        assert re.search(REFUSED, line) or " exited with code 1 while " in line, line
    if run.code in (3, 4):
        assert "run `rolling-update recover`" in one_line(run).lower(), run.stderr
        faults.free()
        fixed = service.recover()
        assert fixed.code == 0, fixed.tail()
    assert_serves_only(service, "1.0.0" if run.code in (1, 3) else "2.0.0")


# The host's RAM as the fault engine's memory cgroup parent: what runs there when the test
# sets it, plus this much room.
Limit = Callable[..., None]


@pytest.fixture
def host_memory(fault_engine: None, service: Service) -> Iterator[Limit]:
    """``limit(room_mb, of=name)``: the memory of every container of the fault engine
    limited to what they use now plus ``room_mb`` MiB (found through container ``of``'s
    process, blue's by default); the limit is lifted after the case, whatever it did."""

    def limit(room_mb: int, *, of: str | None = None) -> None:
        faults.limit_memory(int(service.inspect(of or service.name)["State"]["Pid"]), room_mb)

    try:
        yield limit
    finally:
        faults.unlimit_memory()


@pytest.mark.parametrize(
    ("blue_mb", "restart", "killed"),
    [(0, "unless-stopped", "green"), (150, "unless-stopped", "blue"), (150, "no", "blue")],
    ids=["green-the-biggest", "blue-the-biggest", "blue-the-biggest-no-restart"],
)
def test_host_out_of_memory_while_green_warms_up(
    host_memory: Limit, service: Service, blue_mb: int, restart: str, killed: str
) -> None:
    """The host runs out of memory as green grows during its warm-up, blue holding
    ``blue_mb``: the kernel kills the biggest (and, at times, the other too, before the
    victim's memory is freed). The deploy stops at the first death it sees, green's or
    blue's (whether blue's restart policy brought it back or not), with exit 1 saying
    which was OOM-killed; the rollback leaves blue alone serving."""
    service.start_blue(
        "1.0.0", knobs={"MEMORY_MB": blue_mb}, args=("--network", "host", "--restart", restart)
    )
    service.write_app("2.0.0", knobs={"MEMORY_MB": 200, "ALLOC_MB_AFTER": 0.5, "BOOT_DELAY": 30})
    service.config()
    host_memory(100)
    with Prober(service.version_url()) as prober:
        run = service.deploy()
        until(lambda: service.serving() is not None, "production's port answers", timeout=60)
    report("host out of memory", f"green's warm-up, {killed} the biggest, {restart}", run, prober)
    assert run.code == 1, run.tail()
    line = one_line(run)
    who = f"({re.escape(service.green)}|blue {re.escape(service.name)})"
    # Blue brought back by its policy before the watch's next look: its restart is said.
    how = r"(restarted 1 time\(s\); last it )?was OOM-killed \((SIGKILL, exit 137: )?out of memory"
    assert re.search(f"{who} {how}", line), line
    assert line.endswith("(rolled back: the previous version serves)"), line
    blue = service.inspect(service.name)
    if killed == "blue":
        assert blue["State"]["OOMKilled"] or blue["RestartCount"] > 0, blue["State"]
    assert_serves_only(service, "1.0.0")


# What production takes during the soak: far past the room (production the biggest), or
# just past it, green already holding more (green the biggest).
GROWTH_MB = {"production": 100, "green": 40}


@pytest.mark.parametrize("victim", ["production", "green"])
def test_host_out_of_memory_during_the_soak(
    host_memory: Limit, service: Service, victim: str
) -> None:
    """The host runs out of memory during the soak, as the new production container grows
    while green still runs: the kernel kills the biggest. Production killed: the soak rolls
    back (exit 1, saying it was OOM-killed, or that it gave no answer where the kernel
    stalled it for seconds while reclaiming before the kill) and blue serves again. Green
    killed: the engine's ``oom`` event reaches production too, and is no death of it: the
    deploy ends with exit 0 and the new version, unless the kernel kills production as well
    before green's memory is freed, or production, stalled while the kernel reclaims, misses
    the soak's health check (then exit 1, saying which, as for production)."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config(verify="timeout = 10\nsoak = 8\n")
    since = time.time()
    with Prober(service.version_url()) as prober, service.cli("deploy", timeout=180) as cli:
        cli.until_event("deploy.step.started", step="soak")
        host_memory(80)
        if victim == "green":
            get_json(service.url(port=service.green_port, path="/__standin/alloc?mb=60"))
        get_json(service.url(path=f"/__standin/alloc?mb={GROWTH_MB[victim]}"), timeout=5)
        run = cli.finish()
        until(lambda: service.serving() is not None, "production's port answers", timeout=60)
    report("host out of memory", f"soak, {victim} the biggest", run, prober)
    name = service.green if victim == "green" else service.name
    deaths = service.events_since(since, "die", "{{.Actor.Attributes.exitCode}}", f"name={name}")
    assert "137" in deaths, deaths
    if run.code == 0:
        assert victim == "green", run.tail()
        assert_serves_only(service, "2.0.0")
        return
    assert run.code == 1, run.tail()
    line = one_line(run)
    killed = f"error: {service.name} was OOM-killed (SIGKILL, exit 137: out of memory"
    stalled = f"error: {service.name} turned unhealthy during the 8s soak: no answer within"
    assert killed in line or stalled in line, line
    assert line.endswith("(rolled back: the previous version serves)"), line
    assert_serves_only(service, "1.0.0")


@pytest.mark.parametrize(
    ("phase", "killed"),
    [
        ("tick-boundary", "green"),
        ("tick-boundary", "blue"),
        ("handoff", "green"),
        ("switch", "green"),
        ("verify", "green"),
    ],
)
def test_host_out_of_memory_at_a_phase_of_the_switch(
    host_memory: Limit, service: Service, phase: str, killed: str
) -> None:
    """The host runs out of memory as green grows at blue's tick wait, the redirect, the
    switch or the verify, green or blue the biggest: the kernel kills it, and the deploy
    ends with one production container serving, the new version with exit 0 or the old
    one with exit 1 saying which was OOM-killed; nothing else is left."""
    service.start_blue("1.0.0", knobs={"MEMORY_MB": 150 if killed == "blue" else 0})
    service.write_app("2.0.0", knobs={"BOOT_DELAY": 2})
    service.config(tick=FAULT_TICK, verify="timeout = 20\nsoak = 4\n")
    name = service.green if killed == "green" else service.name
    since = time.time()

    def grow() -> None:
        host_memory(40, of=service.green)
        get_json(service.url(port=service.green_port, path="/__standin/alloc?mb=80"), timeout=5)

    out = deploy_with_fault(service, phase, grow)
    out.report("host out of memory", f"{phase}, {killed} the biggest")
    run = out.run
    deaths = service.events_since(since, "die", "{{.Actor.Attributes.exitCode}}", f"name={name}")
    assert "137" in deaths, deaths
    assert run.code in (0, 1), run.tail()
    if run.code == 1:
        line = one_line(run)
        assert "was OOM-killed" in line, line
    assert_serves_only(service, "1.0.0" if run.code == 1 else "2.0.0")


def test_host_out_of_memory_during_the_build(host_memory: Limit, service: Service) -> None:
    """The host runs out of memory as a step of the build grows past the room left: the
    kernel kills it, the build fails, the deploy rolls back with exit 1 naming the build,
    no container is left, and blue serves untouched."""
    service.start_blue("1.0.0")
    grow = 'RUN python3 -c "import time; b = bytearray(200 << 20); time.sleep(5)"'
    service.write_app("2.0.0", dockerfile_extra=grow)
    service.config()
    host_memory(80)
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    report("host out of memory", "the build", run, prober)
    says = f"error: build of {service.repo}:2.0.0 failed: The command"
    assert_rolled_back_untouched(service, run, prober, f"{says} '/bin/sh -c python3")
    assert "returned a non-zero code: 137" in run.stderr, run.stderr


def test_host_out_of_memory_while_a_migration_runs(host_memory: Limit, service: Service) -> None:
    """The host runs out of memory as a migration grows past the room left: the kernel kills
    it (the biggest), the deploy rolls back with exit 1 naming the migration's kill, no
    container is left, and blue serves untouched."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config(migrate=growing_migration(200))
    host_memory(80)
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    report("host out of memory", "a migration running", run, prober)
    assert_rolled_back_untouched(service, run, prober, MIGRATION_OOM_KILLED)


def test_host_out_of_memory_in_the_cleanup(host_memory: Limit, service: Service) -> None:
    """The host runs out of memory as the cleanup begins, past the commit, production the
    biggest: the kernel kills it and its restart policy brings it back; the deploy, already
    committed, ends with exit 0 and the new version alone serves."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config(verify="timeout = 10\nsoak = 1\n")
    since = time.time()
    # Twice the room: what the cleanup frees as it removes blue (its files' page cache is
    # charged to the same cgroup) once left 100 MiB fitting, and nobody was killed.
    alloc = service.url(path="/__standin/alloc?mb=160")

    def grow() -> None:
        host_memory(80)
        get_json(alloc, timeout=5)

    out = deploy_with_fault(service, "cleanup", grow)
    out.report("host out of memory", "cleanup")
    run = out.run
    deaths = service.events_since(
        since, "die", "{{.Actor.Attributes.exitCode}}", f"name={service.name}"
    )
    assert "137" in deaths, deaths
    assert run.code == 0, run.tail()
    assert_serves_only(service, "2.0.0")
