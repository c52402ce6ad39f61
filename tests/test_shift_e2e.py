"""The gradual traffic shift on the real engine: 10% then 50% of new connections to green,
each step gated, with a client probing production's port every 20 ms all along.

After each case the tool's nftables table is gone and exactly one production container
serves; the client saw no failed request (a refused, reset or unanswered connection).
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.support import Prober, Service

pytestmark = pytest.mark.docker

# The gate probes every 20 ms: at 10% a hold of 4 s sends some 20 of its ~200 client
# probes to green (none in 10^9 holds would miss it).
SHIFT = "steps = [10, 50, 100]\nstep_hold = {hold}\ngate_interval = 0.02\n"


def assert_clean(service: Service, version: str, prober: Prober) -> None:
    assert prober.failures == 0, prober.errors
    assert len(prober.samples) > 20
    assert service.serving() == version
    assert service.containers() == [service.name]
    assert not service.redirected()


def versions_between(prober: Prober, began: float, ended: float) -> set[str]:
    return {v for t, v in list(prober.samples) if began <= t <= ended and v is not None}


def test_a_10_50_100_rollout_completes_with_both_versions_answering_between(
    service: Service,
) -> None:
    """10% → 50% → 100%: each gate passes, during each held step the client's new
    connections reach both versions, and not one request fails."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config(switch=SHIFT.format(hold=4))
    windows: dict[int, tuple[float, float]] = {}
    with Prober(service.version_url()) as prober, service.cli("deploy") as cli:
        for share in (10, 50):
            cli.until_event("shift.step", share=share)
            began = time.monotonic()
            gate = cli.until_event("shift.gate", share=share)
            windows[share] = (began, time.monotonic())
            assert gate["passed"] is True, gate
        run = cli.finish()
    assert run.code == 0, run.tail()
    for share, (began, ended) in windows.items():
        seen = versions_between(prober, began, ended)
        assert seen == {"1.0.0", "2.0.0"}, f"{share}%: only {seen}"
    assert_clean(service, "2.0.0", prober)
    timeline = run.event("deploy.timeline")[0]["timeline"]
    marks = [m["what"] for m in timeline["marks"]]
    assert "10% of new connections to green" in marks and "50% of new connections to green" in marks
    assert [p["name"] for p in timeline["phases"]].index("shift") < [
        p["name"] for p in timeline["phases"]
    ].index("handoff")


def test_a_gate_that_fails_at_10_percent_rolls_back_with_no_failed_request(
    service: Service,
) -> None:
    """The new version answers degraded to connections sent to production's port: the 10%
    gate fails, the port goes back to blue at once and green is removed (exit 1); the
    client saw no failed request, and the 50% step never came."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"FAIL_SENT_TO_PORT": service.port})
    service.config(switch=SHIFT.format(hold=20))
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    assert run.code == 1, run.tail()
    gates = run.event("shift.gate")
    assert [(g["share"], g["passed"]) for g in gates] == [(10, False)], gates
    assert "degraded" in gates[0]["why"]
    assert [e["share"] for e in run.event("shift.step")] == [10]
    assert run.event("handoff.released")
    assert not run.event("handoff.redirect"), "the 100% handoff never came"
    assert_clean(service, "1.0.0", prober)


def test_sigkill_mid_step_then_recover_gives_the_port_to_one_version(service: Service) -> None:
    """A SIGKILL while 50% of new connections go to green leaves the share table and a
    journal saying so, and status shows the 50% share; recover gives the whole port back to
    blue, removes green and the table, and the client saw no failed request through it all."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config(switch=SHIFT.format(hold=60))
    with Prober(service.version_url()) as prober:
        with service.cli("deploy") as cli:
            cli.until_event("shift.step", share=50)
            cli.signal(signal.SIGKILL)
            killed = cli.finish()
        assert killed.code == -signal.SIGKILL
        assert service.redirected(), "the share table outlives the tool"
        journal = service.journal_left()
        assert journal is not None and journal.redirect and journal.shift_share == 50
        shown = service.run("status", "--json", log_format=None)
        assert shown.code == 0, shown.stderr
        report = json.loads(shown.stdout)
        assert (report["redirect_to"], report["redirect_share"]) == (service.green_port, 50)
        assert report["production"]["version"] == "1.0.0" and report["production"]["healthy"]
        text = service.run("status", log_format=None).stdout
        assert f"port -> {service.green_port} for 50% of new connections" in text, text
        seen = versions_between(prober, 0, time.monotonic())
        assert seen == {"1.0.0", "2.0.0"}, seen
        recovered = service.recover()
        assert recovered.code == 0, recovered.tail()
    assert service.journal_left() is None
    assert_clean(service, "1.0.0", prober)
