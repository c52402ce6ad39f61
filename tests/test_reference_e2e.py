"""The shipped config.example.toml deploys the Brain-shaped stand-in with its drain sequence.

Only what cannot be the reference's here is changed: names, ports, the image
repository and state directory (per test), and timings shortened: the stand-in's
loop fires every second (the real one every 5 s) and runs a tick 1.2 s after the
last one ended (the real one 5 minutes), so blue ticks every 2 s. The actions,
env, health, version, tag and migration settings are the example's own.

The Brain's database is a file in a host directory bind-mounted into blue (BRAIN_DB in
blue's env): green, the migrations, the blue check and the new production container,
blue's twins, share it. Tasks live there and run outside any container.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, Collector, Run, Service, docker, get_json, swapped, until

pytestmark = pytest.mark.docker

EXAMPLE = ROOT / "config.example.toml"
DB = "/shared/brain-db.json"  # inside the containers


def reference_config(service: Service, *swaps: tuple[str, str]) -> Path:
    text = EXAMPLE.read_text()
    changes = [
        (r'"cecelia-node-brain-green"', f'"{service.green}"'),
        (r'"cecelia-node-brain"', f'"{service.name}"'),
        (r"(?m)^port = 5221", f"port = {service.port}"),
        (r"(?m)^green_port = 5222", f"green_port = {service.green_port}"),
        (r'"cecelia-brain:\{version\}"', f'"{service.repo}:{{version}}"'),
        (r'(?m)^# dir = "/var/lib/rolling-update"', f'dir = "{service.workdir / "state"}"'),
        # Timings: the stand-in ticks every 2 s, not every 5 minutes.
        (r"(?m)^interval = 5\.0", "interval = 0.1"),
        (r"(?m)^attempts = 12", "attempts = 300"),
        (r"(?m)^settle = 10", "settle = 0.1"),
        (r"(?m)^guard = 5", "guard = 0.4"),
        (r"(?m)^interval = 0\.5  ", "interval = 0.05"),
        (r"(?m)^soak = 5", "soak = 1"),
        *swaps,
    ]
    text = swapped(text, changes, "config.example.toml")
    path = service.workdir / "rolling-update.toml"
    path.write_text(text)
    return path


def shared_db(service: Service) -> Path:
    return service.workdir / "shared" / "brain-db.json"


def db(service: Service) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(shared_db(service).read_text())
    return data


def brain(
    service: Service,
    collector: Collector,
    *,
    task_seconds: float = 1,
    db_seed: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Blue v1 ticking every 2 s, each tick dispatching a task that runs ``task_seconds``.

    Blue's env does not say CECELIA_TICK_ENABLED=true: it defers to the database, so
    restarted it ticks only if the database says enabled.
    """
    shared = shared_db(service).parent
    shared.mkdir()
    if db_seed is not None:
        shared_db(service).write_text(json.dumps(db_seed))
    service.write_env_file(
        {
            "REPORT_URL": collector.url,
            "LOOP_INTERVAL": "1",
            "TICK_INTERVAL": "1.2",
            "TICK_DURATION": "0.2",
            "TASK_SECONDS": str(task_seconds),
            "DB_NAME": service.name,  # an ordinary name: never blanked
            "DB_PASSWORD": "brain-db-pa55",
        }
    )
    args = ["--network", "host", "--restart", "unless-stopped", "-v", f"{shared}:/shared"]
    service.start_blue("1.0.0", {"BRAIN_DB": DB, **(env or {})}, args=args)


def at(events: list[dict[str, Any]], port: int, version: str) -> list[dict[str, Any]]:
    return [e for e in events if e["port"] == port and e["version"] == version]


def tick_status(service: Service) -> dict[str, Any]:
    body = get_json(service.url(path="/api/brain/tick/status"))
    return body if isinstance(body, dict) else {}


def assert_production_ticks(service: Service, version: str) -> None:
    """Production serves ``version``, healthy, its loop running, the database enabled."""
    assert service.serving() == version
    until(lambda: service.health().get("status") == "healthy", f"{version} healthy", timeout=20)
    status = tick_status(service)
    assert (status["loop_running"], status["enabled"]) == (True, True)
    assert db(service)["tick_enabled"] is True


def story(run: Run) -> str:
    """The deploy's stderr and its log events in one line each (for a failure's message)."""
    skip = {"event", "timestamp", "level", "logger", "service", "deploy_id"}
    lines = [
        f"{e.get('event')} {json.dumps({k: v for k, v in e.items() if k not in skip})[:300]}"
        for e in run.events
        if e.get("event") != "container.log"
    ]
    return run.stderr + "\n" + "\n".join(lines)


def actions(run: Run, event: str) -> list[str]:
    return [e["action"] for e in run.event(event)]


def test_reference_config_drains_green_and_blue(service: Service, collector: Collector) -> None:
    """Green never dispatches beside blue; blue is drained before its SIGTERM; v2 then ticks."""
    brain(service, collector)
    service.write_app("2.0.0")
    reference_config(service)
    run = service.deploy()
    assert run.code == 0, story(run)
    assert service.containers() == [service.name]
    assert_production_ticks(service, "2.0.0")

    green = service.green_port
    assert at(collector.of("tick_start"), green, "2.0.0"), "green's loop ran (and ticked)"
    assert at(collector.of("drain"), green, "2.0.0"), "green was drained"
    assert at(collector.of("dispatch"), green, "2.0.0") == [], "green dispatched beside blue"

    blue = service.port
    (sigterm,) = at(collector.of("sigterm"), blue, "1.0.0")
    (drain,) = at(collector.of("drain"), blue, "1.0.0")
    assert drain["time"] < sigterm["time"] and sigterm["draining"] is True
    assert sigterm["during_tick"] is False
    dispatched = at(collector.of("dispatch"), blue, "1.0.0")
    assert dispatched and all(d["time"] < drain["time"] for d in dispatched), "after its drain"
    # The new production dispatches, and only once blue is gone.
    until(lambda: at(collector.of("dispatch"), blue, "2.0.0"), "a dispatch of 2.0.0", timeout=20)
    assert all(d["time"] > sigterm["time"] for d in at(collector.of("dispatch"), blue, "2.0.0"))
    assert not collector.of("drain_completed"), "nobody called drain-status"

    assert actions(run, "action.done") == ["drain green", "drain blue"]
    (check,) = run.event("migrate.blue_check")
    assert check["passed"] is True
    latest = docker("image", "inspect", "-f", "{{.Id}}", f"{service.repo}:latest")
    assert latest == docker("image", "inspect", "-f", "{{.Id}}", f"{service.repo}:2.0.0")
    assert "***" not in run.stdout.replace("DB_PASSWORD=***", "")
    assert f'"{service.name}"' in run.stdout


def test_an_interrupt_after_blues_drain_cancels_it(service: Service, collector: Collector) -> None:
    """SIGINT right after blue's drain: exit 130, blue's drain cancelled, it dispatches again."""
    brain(service, collector)
    service.write_app("2.0.0")
    reference_config(service)
    run = service.deploy_interrupted("handoff", signal.SIGINT)
    ended = time.time()
    assert run.code == 130, story(run)
    blue = service.port
    assert at(collector.of("drain"), blue, "1.0.0"), "blue was drained"
    (cancel,) = at(collector.of("drain_cancel"), blue, "1.0.0")
    assert cancel["was_draining"] is True
    assert "cancel blue's drain" in actions(run, "action.done")
    assert "restart blue's tick loop" in actions(run, "action.skipped"), "blue's loop ran"
    until(
        lambda: [d for d in at(collector.of("dispatch"), blue, "1.0.0") if d["time"] > ended],
        "blue dispatching again",
        timeout=20,
    )
    assert not at(collector.of("sigterm"), blue, "1.0.0")
    assert service.containers() == [service.name]
    assert_production_ticks(service, "1.0.0")


class Dashboard(Collector):
    """A dashboard watching blue's drain: it GETs drain-status as soon as blue is drained.

    (A real one polls it; here it calls at the worst moment, deterministically: inside
    blue's report of its drain, before blue has even answered the tool's POST.) With no
    task in progress, that call ends blue's drain, disables the tick in the database and
    stops blue's loop.
    """

    def __init__(self, blue_port: int) -> None:
        super().__init__()
        self.answers: list[Any] = []
        dashboard = self

        class Events(list[dict[str, Any]]):
            def append(self, event: dict[str, Any]) -> None:
                super().append(event)
                if event["event"] == "drain" and event["port"] == blue_port:
                    url = f"http://127.0.0.1:{blue_port}/api/brain/tick/drain-status"
                    with urllib.request.urlopen(url, timeout=1.5) as response:
                        dashboard.answers.append(json.loads(response.read()))

        self.events = Events()


def test_a_dashboard_ended_drain_is_restarted_by_the_rollback(service: Service) -> None:
    """drain-status stopped blue's loop, the new version dies: blue back ticking, DB enabled."""
    dashboard = Dashboard(service.port)
    try:
        brain(service, dashboard, task_seconds=0)
        service.write_app("2.0.0", knobs={"CRASH_ON_PORT": service.port})
        reference_config(service)
        run = service.deploy()
    finally:
        dashboard.server.shutdown()
        dashboard.server.server_close()
    assert run.code == 1, story(run)
    assert [a.get("drain_completed") for a in dashboard.answers] == [True]
    blue = service.port
    (disabled,) = at(dashboard.of("tick_disabled"), blue, "1.0.0")
    (sigterm,) = at(dashboard.of("sigterm"), blue, "1.0.0")
    assert disabled["time"] < sigterm["time"] and sigterm["draining"] is False
    # Blue came back on a database that says disabled: only the enable action restarts it.
    assert "restart blue's tick loop" in actions(run, "action.done")
    assert at(dashboard.of("tick_enabled"), blue, "1.0.0")
    assert service.containers() == [service.name]
    assert_production_ticks(service, "1.0.0")


def test_a_dashboard_ended_drain_is_restarted_after_an_interrupt(service: Service) -> None:
    """drain-status stopped blue's loop, then SIGINT: the rollback's enable restarts it (130)."""
    dashboard = Dashboard(service.port)
    try:
        brain(service, dashboard, task_seconds=0)
        service.write_app("2.0.0")
        reference_config(service)
        run = service.deploy_interrupted("handoff", signal.SIGINT)
        ended = time.time()
        assert run.code == 130, story(run)
        assert [a.get("drain_completed") for a in dashboard.answers] == [True]
        blue = service.port
        assert at(dashboard.of("tick_disabled"), blue, "1.0.0")
        (cancel,) = at(dashboard.of("drain_cancel"), blue, "1.0.0")
        assert cancel["was_draining"] is False  # the dashboard's call had ended it
        assert "restart blue's tick loop" in actions(run, "action.done")
        assert at(dashboard.of("tick_enabled"), blue, "1.0.0")
        until(
            lambda: [d for d in at(dashboard.of("dispatch"), blue, "1.0.0") if d["time"] > ended],
            "blue dispatching again",
            timeout=20,
        )
        assert not at(dashboard.of("sigterm"), blue, "1.0.0")
    finally:
        dashboard.server.shutdown()
        dashboard.server.server_close()
    assert service.containers() == [service.name]
    assert_production_ticks(service, "1.0.0")


def test_a_stale_next_tick_does_not_hold_the_deploy(service: Service, collector: Collector) -> None:
    """next_tick an hour in the past (ticks that write no tick_last): said, then not waited on."""
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    seed = {"tick_last": long_ago.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
    brain(service, collector, db_seed=seed, env={"TICK_SKIP_LAST": "1"})
    due = datetime.fromisoformat(tick_status(service)["next_tick"].replace("Z", "+00:00"))
    assert due < datetime.now(UTC) - timedelta(minutes=59)
    service.write_app("2.0.0")
    # tick.timeout down from 300 s: holding on to the stale next_tick would fail in 20 s.
    reference_config(service, (r"(?m)^timeout = 300( +# seconds to reach)", r"timeout = 20\1"))
    run = service.deploy()
    assert run.code == 0, story(run)
    stale = run.event("tick.next_tick_stale")  # said by each wait (the tick step, the switch)
    assert stale and all(e["overdue_s"] > 3000 for e in stale)
    (sigterm,) = at(collector.of("sigterm"), service.port, "1.0.0")
    assert sigterm["during_tick"] is False
    assert_production_ticks(service, "2.0.0")
    assert db(service)["tick_last"] == seed["tick_last"]  # nobody wrote it: still stale


def test_a_release_that_migrates_past_blue_is_reported(
    service: Service, collector: Collector
) -> None:
    """A release with SCHEMA 077: the blue check (selfcheck.js of 1.0.0) fails; v2 deploys."""
    brain(service, collector)
    service.write_app("2.0.0", knobs={"SCHEMA": "077"})
    reference_config(service)
    run = service.deploy()
    assert run.code == 0, story(run)
    (check,) = run.event("migrate.blue_check")
    assert check["passed"] is False
    assert '[FAIL] Schema Version: DB=\\"077\\" expected=\\"076\\"' in run.stdout
    assert db(service)["schema_version"] == "077"
    assert_production_ticks(service, "2.0.0")


def test_a_rollback_cancels_blues_drain(service: Service, collector: Collector) -> None:
    """A new version failing on production's port: rolled back, blue's drain cancelled."""
    brain(service, collector)
    service.write_app("2.0.0", knobs={"FAIL_ON_PORT": service.port})
    path = reference_config(service)
    path.write_text(re.sub(r"(?m)^timeout = 30 ", "timeout = 2 ", path.read_text()))
    run = service.deploy()
    assert run.code == 1, story(run)
    assert "cancel blue's drain" in actions(run, "action.done")
    assert at(collector.of("drain_cancel"), service.port, "1.0.0")
    assert service.containers() == [service.name]
    assert_production_ticks(service, "1.0.0")
