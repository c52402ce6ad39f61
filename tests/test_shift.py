"""The gradual shift without an engine: its config, its nft rules, and where the plan puts it."""

from __future__ import annotations

import select
import socket
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rolling_update import ConfigError, DeployContext, HandoffError, default_plan
from rolling_update._config.settings import parse_config
from rolling_update._deploy.records import Preflight, Redirected
from rolling_update._deploy.release import Release
from rolling_update._handoff.nft import (
    EngineFirewall,
    RedirectRule,
    _redirect_script,
    _target_in,
    redirect,
    remove,
    table_name,
    target,
)
from rolling_update._operate.preview import shift_plan
from rolling_update._operate.render import format_status
from rolling_update._operate.status import status
from rolling_update.testing import FakeEngine
from tests.support import free_port

pytestmark = pytest.mark.anyio

# What _redirect_script made before the shift existed: a 100% step must be exactly this.
TODAY = """\
table inet rolling_update_svc
delete table inet rolling_update_svc
table inet rolling_update_svc {
    chain output {
        type nat hook output priority -110; policy accept;
        meta mark 0x52550001 return
        meta nfproto ipv4 fib daddr type local tcp dport 5221 redirect to :5222
        meta nfproto ipv6 fib daddr type local tcp flags & (syn | ack) == syn tcp dport 5221 \
redirect to :5222
    }
    chain prerouting {
        type nat hook prerouting priority -110; policy accept;
        meta mark 0x52550001 return
        meta nfproto ipv4 fib daddr type local tcp dport 5221 redirect to :5222
        meta nfproto ipv6 fib daddr type local tcp flags & (syn | ack) == syn tcp dport 5221 \
redirect to :5222
    }
}
add table inet rolling-update-conntrack
add chain inet rolling-update-conntrack keep { type nat hook output priority 100; policy accept; }
flush chain inet rolling-update-conntrack keep
add rule inet rolling-update-conntrack keep ct state new
"""

# A chain of the table as `nft list table` prints it while a 50% step holds (a remote
# host's, with its bypass rule): what recover and status read back after a kill mid-step.
_RULES_AT_50 = """\
\t\tmeta mark 0x52550001 return
\t\tfib daddr type local tcp dport 18000 redirect to :8000
\t\tmeta nfproto ipv4 fib daddr type local tcp dport 8000 numgen random mod 100 < 50 \
redirect to :8001
\t\tmeta nfproto ipv6 fib daddr type local tcp flags syn / syn,ack tcp dport 8000 \
numgen random mod 100 < 50 redirect to :8001
"""
LISTED_AT_50 = (
    "table inet rolling_update_app {\n"
    + "\n".join(
        f"\tchain {hook} {{\n\t\ttype nat hook {hook} priority {priority}; policy accept;\n"
        f"{_RULES_AT_50}\t}}\n"
        for hook, priority in (("output", "-110"), ("prerouting", "dstnat - 10"))
    )
    + "}\n"
)


def config(**switch: Any) -> Any:
    data = {
        "service": {"name": "app", "green_name": "app-green", "port": 8000, "green_port": 8001},
        "image": {"name": "app:{version}", "version_file": "package.json"},
        "switch": switch,
    }
    return parse_config(data, base_dir=Path("/srv"), environ={}, source="t.toml")


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "the last step must be 100"),
        ([10, 50], "the last step must be 100"),
        ([0, 100], "0 is not a percent 1..100"),
        ([10, 150, 100], "150 is not a percent"),
        ([50, 10, 100], "strictly increasing"),
        ([10, 10, 100], "strictly increasing"),
        (["x", 100], r"\.0: Input should be a valid integer"),
    ],
)
def test_bad_steps_are_refused_naming_the_key(steps: list[Any], message: str) -> None:
    """switch.steps must be percents, strictly increasing, ending at 100; the error names it."""
    with pytest.raises(ConfigError, match=rf"t\.toml: switch\.steps.*{message}"):
        config(steps=steps)


def test_gate_options_are_checked_naming_their_keys() -> None:
    """A metrics URL needs its bound and a scheme; a shift needs the handoff mode; holds are
    above 0 and fit in limits.two_containers."""
    with pytest.raises(ConfigError, match="gate_metrics_url and gate_metrics_max go together"):
        config(gate_metrics_url="http://127.0.0.1:9/rate")
    with pytest.raises(ConfigError, match=r"switch\.gate_metrics_url: .*not an http"):
        config(gate_metrics_url="ftp://x", gate_metrics_max=1)
    with pytest.raises(ConfigError, match=r"switch\.gate_memory_mb"):
        config(gate_memory_mb=0)
    with pytest.raises(ConfigError, match=r"switch.*steps: a gradual shift needs mode"):
        config(steps=[10, 100], mode="restart")
    # A hold of 0 would end each gate before its first probe: a step passed unchecked.
    with pytest.raises(ConfigError, match=r"switch\.step_hold"):
        config(steps=[10, 100], step_hold=0)
    with pytest.raises(ConfigError, match=r"switch\.step_hold: 2 step\(s\) held 150s"):
        config(steps=[10, 50, 100], step_hold=150)
    cfg = config(
        steps=[10, 50, 100], step_hold=20, gate_metrics_url="http://m/q", gate_metrics_max=1
    )
    assert cfg.switch.shares == [10, 50]


def test_the_metrics_urls_password_is_a_secret(tmp_path: Path) -> None:
    """A password in switch.gate_metrics_url is blanked in logs, errors and plan's text."""
    from rolling_update import prepare
    from rolling_update._observe.logs import redactor

    (tmp_path / "package.json").write_text('{"version": "1.0.0"}')
    url = "http://gate:pw-7c1e9a@127.0.0.1:9/rate"
    cfg = parse_config(
        {
            "service": {"name": "app", "green_name": "app-g", "port": 8000, "green_port": 8001},
            "image": {"name": "app:{version}", "version_file": "package.json"},
            "switch": {"steps": [10, 100], "gate_metrics_url": url, "gate_metrics_max": 1},
        },
        base_dir=tmp_path,
        environ={},
        source="t.toml",
    )
    prepare(cfg)
    assert "pw-7c1e9a" not in redactor.scrub(f"the gate failed at {url}")
    assert "pw-7c1e9a" not in shift_plan(cfg, handoff=True)


def test_the_default_plan_has_no_shift_and_a_shift_goes_before_the_tick_boundary() -> None:
    """[100] (the default) plans today's steps; a shift comes after green's health and before
    blue's tick boundary (which, like blue's drain, then happens once, before 100%)."""
    assert "shift" not in [s.name for s in default_plan(config())]
    assert shift_plan(config(), handoff=True).startswith("none")
    names = [s.name for s in default_plan(config(steps=[10, 50, 100]))]
    assert names.index("green-health") + 1 == names.index("shift")
    assert names.index("shift") + 1 == names.index("tick-boundary")
    assert names.index("tick-boundary") < names.index("handoff")
    assert "10% -> 50% -> 100%" in shift_plan(config(steps=[10, 50, 100]), handoff=True)


def test_a_whole_step_is_todays_redirect_byte_for_byte() -> None:
    """The 100% rule, with or without the share argument, is the redirect as it was."""
    assert _redirect_script("rolling_update_svc", 5221, 5222, None) == TODAY
    assert _redirect_script("rolling_update_svc", 5221, 5222, None, 100) == TODAY


def test_a_share_draws_per_connection_in_both_chains_and_families() -> None:
    """A share below 100 adds the numgen draw before each redirect, nothing else changes."""
    script = _redirect_script("rolling_update_svc", 5221, 5222, 15221, 10)
    rule = "tcp dport 5221 numgen random mod 100 < 10 redirect to :5222"
    assert script.count(rule) == 4
    assert script.replace("numgen random mod 100 < 10 ", "") == _redirect_script(
        "rolling_update_svc", 5221, 5222, 15221
    )


@pytest.mark.parametrize("share", [0, 101])
def test_a_share_the_config_would_refuse_is_refused_by_the_redirect_too(share: int) -> None:
    """A custom step's to_green(share) outside 1..100 writes no rule: the config's words."""
    with pytest.raises(HandoffError, match=rf"share: {share} is not a percent 1\.\.100"):
        _redirect_script("rolling_update_svc", 5221, 5222, None, share)


async def test_a_share_splits_new_connections_and_reads_back_as_a_redirect() -> None:
    """On loopback, a 50% share sends some new connections to each side; nft's listing
    reads back as a redirect to green of 50% (what recover and status look for)."""
    table = table_name(f"rutest-{uuid.uuid4().hex[:8]}")
    listeners = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", free_port()))
        sock.listen(64)
        sock.settimeout(2)
        listeners.append(sock)
    prod, green = (s.getsockname()[1] for s in listeners)
    seen = {prod: 0, green: 0}
    try:
        await redirect(table, prod, green, share=50)
        assert await target(table, prod) == RedirectRule(green, 50)
        for _ in range(60):
            with socket.create_connection(("127.0.0.1", prod), timeout=2) as client:
                ready, _, _ = select.select(listeners, [], [], 2)
                assert len(ready) == 1, "a connection reached one side"
                accepted, _ = ready[0].accept()
                accepted.close()
                seen[ready[0].getsockname()[1]] += 1
                client.close()
    finally:
        await remove(table)
        for sock in listeners:
            sock.close()
    assert await target(table) is None
    assert seen[prod] > 0 and seen[green] > 0, seen


def test_a_share_reads_back_from_the_listing_and_a_whole_redirect_as_100() -> None:
    """The one reader of a table gives the redirect's port and its share: 50 for a step's
    draw, 100 for a rule without one (the bypass rule, or the handoff's)."""
    assert _target_in(LISTED_AT_50) == RedirectRule(8001, 50)
    assert _target_in(LISTED_AT_50, 8000) == RedirectRule(8001, 50)
    assert _target_in(LISTED_AT_50, 18000) == RedirectRule(8000, 100)
    whole = LISTED_AT_50.replace("numgen random mod 100 < 50 ", "")
    assert _target_in(whole, 8000) == RedirectRule(8001, 100)
    assert _target_in("table inet rolling_update_app {\n}\n") is None


async def test_status_shows_the_share_of_a_shift_left_in_place(tmp_path: Path) -> None:
    """status, reading a remote host's table through the nft helper, reports the share of
    a step left in place (a kill mid-step) in --json and in its text."""
    cfg = config(steps=[10, 50, 100])
    cfg = cfg.model_copy(update={"state": cfg.state.model_copy(update={"dir": tmp_path})})
    engine = FakeEngine(images={"app:1"})
    engine.run_answer = lambda spec: (0, LISTED_AT_50)
    firewall = EngineFirewall(engine, "app:1", service="svc", bypass_port=18000)
    report = await status(cfg, engine=engine, firewall=firewall)
    assert (report["redirect_to"], report["redirect_share"]) == (8001, 50)
    listed = [list(spec.command or ())[-4:] for spec in engine.runs]
    assert listed == [["list", "table", "inet", table_name("app")]]
    assert "redirect     port -> 8001 for 50% of new connections" in format_status(report)
    engine.run_answer = lambda spec: (0, LISTED_AT_50.replace("numgen random mod 100 < 50 ", ""))
    report = await status(cfg, engine=engine, firewall=firewall)
    assert (report["redirect_to"], report["redirect_share"]) == (8001, 100)
    assert "redirect     port -> 8001 (handoff in place)" in format_status(report)


async def test_on_a_remote_host_the_gates_client_probes_go_to_production_not_the_bypass() -> None:
    """On an engine's host, with a share in place, the gate's client view is the host's
    production port (split like its clients'), the tool's own view its bypass port."""
    cfg = config(steps=[10, 100])
    remote = cfg.service.model_copy(update={"host": "10.0.0.5"})
    cfg = cfg.model_copy(update={"service": remote})
    firewall = EngineFirewall(FakeEngine(), "app:1", service="svc", bypass_port=18000)
    async with aiohttp.ClientSession() as http:
        ctx = DeployContext(
            config=cfg,
            engine=FakeEngine(),
            http=http,
            deploy_id="d1",
            release=Release(version="2", image="app:2", env={}),
            found=Preflight(blue=None, blue_health=None, handoff=True),
            firewall=firewall,
        )
        ctx.give(Redirected(active=True))
        assert ctx.url(8000, "/health", as_client=True) == "http://10.0.0.5:8000/health"
        assert ctx.url(8000, "/health") == "http://10.0.0.5:18000/health"
        assert ctx.url(8001, "/health") == "http://10.0.0.5:8001/health"


@pytest.mark.anyio
async def test_a_gate_whose_hold_ends_before_any_probe_answers_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hold shorter than a hanging probe judged nothing: the gate fails, it does not pass."""
    import contextlib
    from types import SimpleNamespace

    import steps.shift
    from rolling_update import ShiftGateFailed
    from rolling_update._deploy.session import http_session

    cfg = config(steps=[10, 100], step_hold=0.2)
    cfg = cfg.model_copy(update={"health": cfg.health.model_copy(update={"request_timeout": 30.0})})

    @contextlib.asynccontextmanager
    async def unwatched(*_: Any, **__: Any) -> Any:
        # Green's watch needs an engine; what is under test is the hold's verdict.
        yield SimpleNamespace(memory_peak=0)

    monkeypatch.setattr(steps.shift, "watching_green", unwatched)
    with socket.socket() as hanging:
        # Listening, never accepting: a connection is made and no answer ever comes.
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(8)
        port = hanging.getsockname()[1]
        async with http_session() as http:
            ctx = SimpleNamespace(
                url=lambda _port, path, as_client=False: f"http://127.0.0.1:{port}{path}",
                http=http,
                version="2",
                note_green_memory=lambda peak: None,
            )
            step = steps.shift.ShiftTraffic(cfg.service, cfg.switch, cfg.health)
            with pytest.raises(ShiftGateFailed, match="no gate probe finished"):
                await step._gate(ctx, None, 10)  # type: ignore[arg-type]
