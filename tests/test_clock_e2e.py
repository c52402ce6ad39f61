"""The wall clock steps (as an NTP step does) in the middle of a deploy, made for real.

The machine's CLOCK_REALTIME is stepped by an hour, forward or back, at a phase of a
deploy on the main engine, and put back afterwards. Every deadline and duration of the
tool runs on the monotonic clock (tests/test_structure.py keeps it so), so a step must
move none: the deploy ends as it would have, no wait ends early or runs on, the
durations it reports are the real ones, and a client on production's port sees no
failure. The blue it waits on reads the same clock (its ``next_tick`` is a wall-clock
time), so a step moves both sides of that comparison.

Steps the clock of the whole machine: nothing else may run beside these tests (CI runs
one test at a time); each step is taken back in a ``finally``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.support import Run, Service, assert_serves_only, deploy_with_fault, slow_migration

pytestmark = pytest.mark.docker

HOUR = 3600.0


class SteppedClock:
    """The machine's wall clock, stepped and put back; the monotonic clock never moves."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._lock = threading.Lock()

    def step(self, seconds: float) -> None:
        with self._lock:
            time.clock_settime(time.CLOCK_REALTIME, time.time() + seconds)
            self.offset += seconds

    def restore(self) -> None:
        # The wall clock ran on meanwhile: taking the offset back leaves it as accurate
        # as it was, to the few microseconds the two calls take.
        with self._lock:
            if self.offset:
                time.clock_settime(time.CLOCK_REALTIME, time.time() - self.offset)
                self.offset = 0.0


@pytest.fixture
def clock() -> Iterator[SteppedClock]:
    stepped = SteppedClock()
    try:
        yield stepped
    finally:
        stepped.restore()


def prepared(service: Service, **knobs: object) -> None:
    """Blue v1 serving (its tick loop reporting next_tick), v2 to deploy; green boots in 2 s
    and the soak lasts 3 s, so that a step sent at a phase's start lands inside it."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"BOOT_DELAY": 2, **knobs})
    service.config(
        tick="settle = 1\nguard = 1\ninterval = 0.1\ntimeout = 30\n",
        verify="timeout = 20\nsoak = 3\n",
    )


@pytest.mark.parametrize("seconds", [HOUR, -HOUR], ids=["forward", "back"])
@pytest.mark.parametrize(
    "step", ["green-health", "tick-boundary", "handoff", "switch", "verify", "soak", "cleanup"]
)
def test_a_clock_step_mid_deploy_moves_no_deadline(
    clock: SteppedClock, service: Service, step: str, seconds: float
) -> None:
    """An hour's step of the wall clock, forward or back, at any phase from green's warm-up
    to the cleanup changes nothing: exit 0, the new version serves from one container,
    not one request fails, and every duration the deploy reports is real."""
    prepared(service)
    stepped_mid_deploy(clock, service, step, seconds)


def stepped_mid_deploy(clock: SteppedClock, service: Service, step: str, seconds: float) -> Run:
    """The deploy, the clock stepped by ``seconds`` as ``step`` begins: exit 0, the new
    version alone serves, not one request failed, every duration it reports is real."""
    out = deploy_with_fault(
        service, step, lambda: clock.step(seconds), timeout=180, undo=clock.restore
    )
    run = out.run
    assert run.code == 0, run.tail()
    assert_serves_only(service, "2.0.0")
    assert out.failures == 0, run.tail()
    # A duration read from the wall clock would be off by the hour.
    (done,) = run.event("deploy.done")
    assert 0 < done["seconds"] < run.seconds
    finished = [e["seconds"] for e in run.event("deploy.step.done")]
    assert finished and all(0 <= s < run.seconds for s in finished), finished
    out.report(f"clock step {seconds:+.0f}s", step)
    return run


def test_a_clock_stepped_back_does_not_stretch_a_deadline(
    clock: SteppedClock, service: Service
) -> None:
    """A green that never answers, and the wall clock stepped back an hour during its
    warm-up: its health deadline still ends the wait on time (the deploy rolls back with
    exit 1 and blue serves), not an hour later."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"BOOT_DELAY": 600})
    service.config(
        health='path = "/api/brain/health"\nexpect_json = { status = "healthy" }\n'
        'version_path = "/api/brain/hardening/status"\ninterval = 0.1\nattempts = 30\n',
    )
    out = deploy_with_fault(
        service, "green-health", lambda: clock.step(-HOUR), timeout=120, undo=clock.restore
    )
    assert out.run.code == 1, out.run.tail()
    assert_serves_only(service, "1.0.0")
    assert out.failures == 0, out.run.tail()


@pytest.mark.parametrize("seconds", [HOUR, -HOUR], ids=["forward", "back"])
@pytest.mark.parametrize("step", ["build", "migrate"])
def test_a_clock_step_in_the_build_or_a_migration_moves_no_deadline(
    clock: SteppedClock, service: Service, step: str, seconds: float
) -> None:
    """An hour's step of the wall clock, forward or back, while the build runs a slow step
    of its own or a 3 s migration runs: neither's deadline moves (exit 0, the new version
    serves from one container, not one request fails, every duration real)."""
    service.start_blue("1.0.0")
    # Its own line: a build cache kept from another case or run would skip the step.
    slow_step = f"RUN sleep 3 && echo {service.name}"
    service.write_app("2.0.0", dockerfile_extra=slow_step if step == "build" else "")
    service.config(migrate=slow_migration(3, timeout=30))
    run = stepped_mid_deploy(clock, service, step, seconds)
    (done,) = [e for e in run.event("deploy.step.done") if e.get("step") == step]
    # The step took what it ran (3 s and a little), not an hour more or less.
    assert 3 <= done["seconds"] < run.seconds, done
