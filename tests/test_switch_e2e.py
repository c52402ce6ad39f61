"""The switch on the real engine: rollback after it, tick awareness, memory and time bars."""

from __future__ import annotations

import pytest

from tests.support import Collector, Prober, Service

pytestmark = pytest.mark.docker


def test_new_version_failing_on_the_production_port_is_rolled_back(service: Service) -> None:
    """Healthy on green's port, degraded on production's: after the switch, blue comes back."""
    blue_id = service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"FAIL_ON_PORT": service.port})
    service.config(verify="timeout = 2\n")
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    assert run.code == 1, run.stderr
    assert "did not serve 2.0.0 healthily within 2s: status is 'degraded'" in run.stderr
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]
    assert service.inspect(service.name)["Id"] == blue_id
    assert prober.versions == ["1.0.0", "2.0.0", "1.0.0"]
    failed = run.event("deploy.failed")[0]
    assert failed["measured"]["rollback_outage_s"] > 0


def test_production_dying_after_the_switch_is_rolled_back_at_once(service: Service) -> None:
    """A new production container that exits is caught by its die event, not the 60 s deadline."""
    blue_id = service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"CRASH_ON_PORT": service.port})
    service.config(verify="timeout = 60\n")
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    assert run.code == 1
    # The event path names the exit; the deadline path would say "within 60s".
    assert f"{service.name} exited with code 3 while waiting for health" in run.stderr
    assert "crashing on purpose: refusing port" in run.stderr
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]
    assert service.inspect(service.name)["Id"] == blue_id
    # Green (2.0.0) answered while the port was handed to it; nobody got an error.
    assert prober.versions == ["1.0.0", "2.0.0", "1.0.0"] and prober.failures == 0


def test_blue_is_never_stopped_mid_tick(service: Service, collector: Collector) -> None:
    """Across three deploys with a 0.8 s tick every 2.85 s, every SIGTERM lands between ticks."""
    # The loop fires every 50 ms and ticks 2 s after the last tick ended: next_tick (the
    # last start + 2 s) leaves an idle window of 0.4 s past settle and guard in each period.
    service.write_env_file(
        {
            "REPORT_URL": collector.url,
            "LOOP_INTERVAL": "0.05",
            "TICK_INTERVAL": "2",
            "TICK_DURATION": "0.8",
        }
    )
    service.start_blue("1.0.0")
    for version in ("2.0.0", "3.0.0", "4.0.0"):
        service.write_app(version)
        service.config(tick="settle = 0.2\nguard = 0.6\ninterval = 0.05\ntimeout = 30\n")
        run = service.deploy()
        assert run.code == 0, run.stderr
    sigterms = [e for e in collector.of("sigterm") if e["port"] == service.port]
    assert [e["version"] for e in sigterms] == ["1.0.0", "2.0.0", "3.0.0"]
    assert all(e["during_tick"] is False for e in sigterms)
    assert len(collector.of("tick_start")) >= 3  # ticks really ran around the switches


def test_green_above_the_memory_bar_is_rolled_back(service: Service) -> None:
    """A green holding more than limits.green_memory_mb fails the deploy; blue keeps serving."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"MEMORY_MB": 120})
    service.config(
        limits="green_memory_mb = 60\n",
        tick="settle = 3\nguard = 1\ninterval = 0.1\ntimeout = 30\n",
    )
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    assert run.code == 1
    assert "above the limit of 60 MB" in run.stderr
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]
    assert prober.failures == 0


def test_two_containers_past_their_deadline_are_rolled_back(service: Service) -> None:
    """Blue and green side by side longer than limits.two_containers: roll back, blue serves."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config(
        limits="two_containers = 1.5\n",
        tick="settle = 10\nguard = 1\ninterval = 0.1\ntimeout = 30\n",
    )
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    assert run.code == 1
    assert "limits.two_containers = 1.5s" in run.stderr
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]
    assert prober.failures == 0


def test_success_reports_the_measured_figures(service: Service) -> None:
    """The end of a deploy reports downtime window, two-container time and green's memory peak."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"MEMORY_MB": 30})
    service.config(tick="settle = 1.5\nguard = 1\ninterval = 0.1\ntimeout = 30\n")
    run = service.deploy()
    assert run.code == 0, run.stderr
    measured = run.event("deploy.done")[0]["measured"]
    assert {"handoff_s", "switch_s", "two_containers_s", "blue_stop_s"} <= set(measured)
    assert measured["green_memory_peak_mb"] >= 30
