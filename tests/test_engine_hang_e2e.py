"""A hung or vanishing Docker engine, made for real with a proxy in front of its socket.

The deploy reaches the engine through :class:`~tests.engineproxy.EngineProxy`
(its DOCKER_HOST); the test's own look at the host goes straight to the engine.
At a phase of the deploy the proxy stalls every call (a hung ``dockerd``) or
drops every connection (an engine going away), and either answers again after
a while or never. Each case asserts that the tool ends by its deadlines, its
exit code and one line, and the host it leaves: what serves production's port,
which containers exist, the redirect, the journal and the engine's mark. Where
the engine never came back, ``recover`` (once it answers) finishes the job.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from tests.engineproxy import EngineProxy
from tests.support import (
    BASE_IMAGE,
    Cli,
    Prober,
    Run,
    Service,
    assert_serves_only,
    one_line,
    slow_migration,
)

pytestmark = pytest.mark.docker

CALL_TIMEOUT = 2.0
# A hang that "passes after a while" outlasts one call's deadline, never an undo's budget.
WHILE = 2 * CALL_TIMEOUT
# Whatever the engine does, the deploy ends well inside this (its deadlines add up to
# about 60 s here); the Cli fails the test past it.
BOUND = 150
STOP = r"POST /v[\d.]+/containers/[0-9a-f]+/stop"
GIVE_UP = "once the engine answers again, run `rolling-update recover`"


def prepared(
    service: Service,
    *,
    knobs: dict[str, object] | None = None,
    verify: str = "timeout = 10\nsoak = 1\n",
) -> None:
    """Blue v1 serving; v2 (with ``knobs``) to deploy, with short engine deadlines."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs=knobs)
    service.config(
        engine=f"call_timeout = {CALL_TIMEOUT}\n",
        rollback="step_timeout = 8\ntimeout = 20\n",
        tick="settle = 1\nguard = 1\ninterval = 0.1\ntimeout = 30\n",
        verify=verify,
    )


def through(proxy: EngineProxy, service: Service) -> Cli:
    """A deploy that reaches the engine through ``proxy``."""
    return service.cli("deploy", environ={"DOCKER_HOST": proxy.url}, timeout=BOUND)


def later(proxy: EngineProxy, comes_back: bool) -> None:
    """The engine answers again ``WHILE`` s from now, or never."""
    if comes_back:
        timer = threading.Timer(WHILE, proxy.pass_)
        timer.daemon = True
        timer.start()


@contextlib.contextmanager
def stalled(
    service: Service,
    proxy: EngineProxy,
    comes_back: bool,
    *,
    event: str = "deploy.step.started",
    fault: str = "stall",
    **fields: str,
) -> Iterator[tuple[Run, Prober]]:
    """A deploy through ``proxy`` whose engine stalls (or, ``fault="drop"``, drops every
    connection) once its log shows ``event`` (with ``fields``) and answers again ``WHILE``
    s later, or never: the run, and the probe of production's port, which goes on while
    the block looks at the host."""
    with Prober(service.version_url()) as prober:
        with through(proxy, service) as cli:
            cli.until_event(event, **fields)
            proxy.drop() if fault == "drop" else proxy.stall()
            later(proxy, comes_back)
            run = cli.finish()
        yield run, prober


def hang_at_blue_stop(proxy: EngineProxy, fault: str) -> None:
    """Once blue's stop is sent (and held), the whole engine stalls or drops."""
    proxy.stall(only=STOP)
    if not proxy.held.wait(60):
        pytest.fail("the switch never sent blue's stop")
    proxy.drop() if fault == "drop" else proxy.stall()


def report(phase: str, fault: str, comes_back: bool, run: Run, prober: Prober) -> None:
    """The outcome-table row of this case, for the README (pytest -s shows it): production's
    port probed through the deploy and, where the engine never came back, the recover."""
    print(
        f"\nOUTCOME fault={fault} phase={phase} back={'after' if comes_back else 'never'}"
        f" exit={run.code} seconds={run.seconds:.1f} failed={prober.failures}"
        f" of={len(prober.samples)} dark={prober.longest_gap():.2f}"
        f" line={run.stderr.strip()[-160:]!r}"
    )


def assert_gave_up(service: Service, proxy: EngineProxy, run: Run) -> None:
    """Exit 3, with one line saying what a human must do; the journal and mark are kept
    for `recover`, which (once the engine answers) brings back exactly one blue."""
    assert run.code == 3, run.tail()
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and GIVE_UP in lines[0], run.stderr
    assert "did not answer" in lines[0] or "unreachable" in lines[0], run.stderr
    assert service.journal.exists() and service.marked()
    proxy.pass_()
    recovered = service.recover()
    assert recovered.code == 0, recovered.tail()
    assert_serves_only(service, "1.0.0")


def assert_rolled_back(service: Service, run: Run) -> None:
    """Exit 1 naming the engine's failure; blue alone serves, nothing left."""
    assert run.code == 1, run.tail()
    assert "the Docker engine failed during the deploy" in run.stderr, run.stderr
    assert_serves_only(service, "1.0.0")


def assert_finished_by_recover(service: Service, proxy: EngineProxy, run: Run) -> None:
    """Past the commit: exit 4, the new version serves with one line saying to run
    `recover`, which (once the engine answers) removes what the cleanup left."""
    assert run.code == 4, run.tail()
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "the new version serves; run `rolling-update recover`" in lines[0]
    assert service.serving() == "2.0.0"
    proxy.pass_()
    recovered = service.recover()
    assert recovered.code == 0, recovered.tail()
    assert_serves_only(service, "2.0.0")


@pytest.mark.parametrize("comes_back", [True, False], ids=["back-after-a-while", "never-back"])
@pytest.mark.parametrize(
    "phase", ["green-health", "tick-boundary", "handoff", "verify", "soak", "cleanup"]
)
def test_engine_hangs_during_a_phase(
    service: Service, engine_proxy: EngineProxy, phase: str, comes_back: bool
) -> None:
    """The engine stalls at the start of green's warm-up, blue's tick wait, the handoff, the
    verify or the soak: the watch's unanswered call fails the step by engine.call_timeout,
    so nothing is committed unobserved; the rollback finishes once the engine answers
    (exit 1), or gives up by its deadlines with exit 3 and `recover` to run; blue serves
    throughout. Stalled in the cleanup, past the commit, the new version serves: the
    removals are asked again until the engine answers (exit 0), or, past the cleanup's
    budget, exit 4 and `recover` finishes."""
    # A soak long enough for an unanswered call to fail inside it.
    prepared(service, verify="timeout = 10\nsoak = 6\n")
    with stalled(service, engine_proxy, comes_back, step=phase) as (run, prober):
        if phase == "cleanup" and comes_back:
            # Asked again within the cleanup's budget, the removals land once it answers.
            assert run.code == 0, run.tail()
            assert run.event("cleanup.again"), run.tail()
            assert_serves_only(service, "2.0.0")
        elif phase == "cleanup":
            assert "did not answer" in run.stderr
            assert_finished_by_recover(service, engine_proxy, run)
        elif comes_back:
            assert "did not answer" in run.stderr
            assert_rolled_back(service, run)
        else:
            assert "did not answer" in run.stderr
            assert_gave_up(service, engine_proxy, run)
    assert prober.failures == 0, prober.errors
    report(phase, "stall", comes_back, run, prober)


@pytest.mark.parametrize("comes_back", [True, False], ids=["back-after-a-while", "never-back"])
@pytest.mark.parametrize("fault", ["stall", "drop"])
def test_engine_fails_at_blues_stop(
    service: Service, engine_proxy: EngineProxy, fault: str, comes_back: bool
) -> None:
    """The engine hangs (or drops every connection) once the switch sent blue's stop: blue
    keeps serving, renamed, beside the created production container and behind the
    redirect to green. A stall shorter than the stop's deadline only delays the deploy
    (exit 0, the new version); otherwise it rolls back (exit 1) or gives up by its
    deadlines (exit 3, `recover` to run)."""
    prepared(service)
    with Prober(service.version_url()) as prober:
        with through(engine_proxy, service) as cli:
            cli.until_event("deploy.step.started", step="switch")
            hang_at_blue_stop(engine_proxy, fault)
            later(engine_proxy, comes_back)
            run = cli.finish()
        if not comes_back:
            assert_gave_up(service, engine_proxy, run)
        elif fault == "stall":
            # The held stop reaches the engine within its own deadline (grace + call_timeout).
            assert run.code == 0, run.tail()
            assert_serves_only(service, "2.0.0")
        else:
            assert_rolled_back(service, run)
    assert prober.failures == 0, prober.errors
    report("switch (blue's stop)", fault, comes_back, run, prober)


@pytest.mark.parametrize("comes_back", [True, False], ids=["back-after-a-while", "never-back"])
def test_engine_hangs_during_the_rollback(
    service: Service, engine_proxy: EngineProxy, comes_back: bool
) -> None:
    """A new version degraded on production's port fails its verify, and the engine stalls
    as the rollback begins: each undo tries again while its budget lasts, so an engine
    that answers again gets blue back (exit 1); one that never does gets exit 3 by the
    rollback's deadline, with what to do, and the redirect keeps production's port served."""
    prepared(service, knobs={"FAIL_ON_PORT": service.port}, verify="timeout = 3\nsoak = 1\n")
    with stalled(service, engine_proxy, comes_back, event="deploy.compensate.started") as (
        run,
        prober,
    ):
        if comes_back:
            assert run.code == 1, run.tail()
            assert "did not serve 2.0.0 healthily" in run.stderr
            assert_serves_only(service, "1.0.0")
        else:
            # The redirect to green is kept: something serves production's port meanwhile.
            assert service.serving() is not None
            assert_gave_up(service, engine_proxy, run)
    report("rollback", "stall", comes_back, run, prober)


@pytest.mark.parametrize("comes_back", [True, False], ids=["back-after-a-while", "never-back"])
@pytest.mark.parametrize("phase", ["build", "migrate"])
def test_engine_hangs_during_the_build_or_a_migration(
    service: Service, engine_proxy: EngineProxy, phase: str, comes_back: bool
) -> None:
    """The engine stalls as the build or the migrations begin, before anything serving is
    touched. The build's stream waits (bounded by build.timeout): an engine back after a
    while lets it finish and the deploy goes on (exit 0); the migration's first call fails
    by engine.call_timeout and the rollback finishes once the engine answers (exit 1).
    Never back, either gives up by its deadlines with exit 3, `recover` to run; blue
    serves throughout."""
    prepared(service)
    service.config(
        engine=f"call_timeout = {CALL_TIMEOUT}\n",
        rollback="step_timeout = 8\ntimeout = 20\n",
        build=f'context = "brain"\nargs = {{ BASE = "{BASE_IMAGE}" }}\ntimeout = 15\n',
        migrate=slow_migration(3, timeout=15),
    )
    with stalled(service, engine_proxy, comes_back, step=phase) as (run, prober):
        assert prober.failures == 0, prober.errors
        if not comes_back:
            assert_gave_up(service, engine_proxy, run)
        elif phase == "build":
            assert run.code == 0, run.tail()
            assert_serves_only(service, "2.0.0")
        else:
            assert "did not answer" in run.stderr
            assert_rolled_back(service, run)
    report(phase, "stall", comes_back, run, prober)


@pytest.mark.parametrize(
    "phase",
    ["build", "migrate", "green-health", "tick-boundary", "handoff", "verify", "soak", "cleanup"],
)
def test_engine_drops_every_connection_during_a_phase(
    service: Service, engine_proxy: EngineProxy, phase: str
) -> None:
    """The engine's socket drops every connection (an engine going away) as a phase begins,
    and takes them again 4 s later: the first call cut fails the step, one line names the
    unreachable engine by its address, and the rollback finishes once it answers (exit 1,
    blue serving throughout, nothing left); in the cleanup, past the commit, the removals
    are asked again (exit 0, the new version alone)."""
    prepared(service, verify="timeout = 10\nsoak = 6\n")
    service.config(
        engine=f"call_timeout = {CALL_TIMEOUT}\n",
        rollback="step_timeout = 8\ntimeout = 20\n",
        tick="settle = 1\nguard = 1\ninterval = 0.1\ntimeout = 30\n",
        verify="timeout = 10\nsoak = 6\n",
        build=f'context = "brain"\nargs = {{ BASE = "{BASE_IMAGE}" }}\ntimeout = 15\n',
        migrate=slow_migration(3, timeout=15),
    )
    with stalled(service, engine_proxy, True, fault="drop", step=phase) as (run, prober):
        assert prober.failures == 0, prober.errors
        if phase == "cleanup":
            assert run.code == 0, run.tail()
            assert_serves_only(service, "2.0.0")
        else:
            assert run.code == 1, run.tail()
            assert f"Docker engine unreachable at {engine_proxy.url}: " in one_line(run), run.tail()
            assert_serves_only(service, "1.0.0")
    report(phase, "drop", True, run, prober)
