"""`recover` decisions on the in-memory FakeEngine: what it removes, renames and starts.

The end-to-end proof (SIGKILL at every step on a real engine) is in
test_faults_e2e.py; these cover the states a kill can leave, one by one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from rolling_update import Config, ContainerSpec, RecoveryFailed
from rolling_update._config.settings import parse_config
from rolling_update._deploy.records import Switched
from rolling_update._deploy.release import Release
from rolling_update._engine.model import (
    LABEL_DEPLOY,
    LABEL_MANAGED,
    LABEL_MARKER_PID,
    LABEL_ROLE,
    LABEL_SERVICE,
)
from rolling_update._handoff.helper import HELPER_ROLE
from rolling_update._handoff.nft import LocalFirewall
from rolling_update._operate.recover import preview, recover
from rolling_update._state.journal import Journal
from rolling_update._state.mark import marker_labels, marker_name
from rolling_update.testing import FakeEngine
from tests.support import RecordingFirewall, free_port

pytestmark = pytest.mark.anyio


async def healthy_server() -> AsyncIterator[int]:
    """A healthy stand-in on a port of its own: the engine is fake, HTTP is not."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy", "version": "x"})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    number = free_port()
    await web.TCPSite(runner, "127.0.0.1", number).start()
    yield number
    await runner.cleanup()


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """Production's port, answered healthily."""
    async for number in healthy_server():
        yield number


@pytest.fixture
async def green_port() -> AsyncIterator[int]:
    """Green's port, answered healthily."""
    async for number in healthy_server():
        yield number


def config(tmp_path: Path, port: int, green_port: int = 1) -> Config:
    data = {
        "service": {
            "name": "app",
            "green_name": "app-green",
            "port": port,
            "green_port": green_port,
        },
        "image": {"name": "app:{version}", "version_file": "p.json"},
        "health": {"path": "/health"},
        "verify": {"timeout": 2},
        "state": {"dir": "state"},
    }
    return parse_config(data, base_dir=tmp_path, environ={}, source="t.toml")


def ours(name: str, role: str, deploy_id: str, image: str = "app:2") -> ContainerSpec:
    labels = {
        LABEL_MANAGED: "true",
        LABEL_SERVICE: "app",
        LABEL_ROLE: role,
        LABEL_DEPLOY: deploy_id,
    }
    return ContainerSpec(name=name, image=image, labels=labels)


def journal(cfg: Config, **facts: object) -> None:
    j = Journal.begin(cfg.state_dir, deploy_id="d2", service="app", image="app:2", version="2")
    j.update(**facts)


async def test_kill_mid_switch_restores_blue(tmp_path: Path, port: int) -> None:
    """Blue renamed and stopped, new production created: blue gets its name back and runs."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"), running=False)
    engine.add(ours("app", "production", "d2"), running=False)
    engine.add(ours(cfg.service.green_name, "green", "d2"))
    journal(cfg, step="switch", blue_id=blue.id, blue_was_running=True)
    report = await recover(cfg, engine=engine)
    assert engine.names() == ["app"]
    assert engine.containers[blue.id].name == "app" and engine.containers[blue.id].running
    assert report.outcome == "the previous version serves"
    assert not Journal.path_for(cfg.state_dir).exists()


async def test_a_blue_caught_in_its_restart_loop_is_stopped_renamed_and_started(
    tmp_path: Path, port: int
) -> None:
    """Blue, killed under the tool (the kernel's OOM killer), waits between its restart
    policy's attempts, which the engine will not rename: stopped first, renamed, started."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"))
    blue.restarting = True
    journal(cfg, step="switch", blue_id=blue.id, blue_was_running=True)
    report = await recover(cfg, engine=engine)
    assert engine.calls == [
        f"stop {cfg.service.old_name}",
        f"rename {cfg.service.old_name} app",
        "start app",
    ]
    assert engine.containers[blue.id].running and not blue.restarting
    assert report.outcome == "the previous version serves"


async def test_kill_after_verification_keeps_the_new_version(tmp_path: Path, port: int) -> None:
    """A verified deploy killed in cleanup: green and old blue go, the new production stays."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"), running=False)
    new = engine.add(ours("app", "production", "d2"))
    engine.add(ours(cfg.service.green_name, "green", "d2"))
    journal(cfg, step="cleanup", blue_id=blue.id, committed=True)
    report = await recover(cfg, engine=engine)
    assert engine.names() == ["app"] and engine.containers[new.id].name == "app"
    assert report.outcome == "the new version 2 serves"


async def test_a_helper_a_deploy_cut_short_left_behind_is_removed(
    tmp_path: Path, port: int
) -> None:
    """A helper container outlived by its deploy (an engine away past the helper's own
    clean-up) carries the service's label: recover removes it, whatever the outcome."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"), running=False)
    new = engine.add(ours("app", "production", "d2"))
    labels = {LABEL_MANAGED: "true", LABEL_SERVICE: "app", LABEL_ROLE: HELPER_ROLE}
    helper = ContainerSpec(name="rolling-update-cat-1", image="app:1", labels=labels)
    engine.add(helper, running=False)
    journal(cfg, step="cleanup", blue_id=blue.id, committed=True)
    report = await recover(cfg, engine=engine)
    assert engine.names() == ["app"] and new.id in engine.containers
    assert any("rolling-update-cat-1" in line for line in report.actions), report.actions


async def test_a_committed_production_found_stopped_answers_before_blue_goes(
    tmp_path: Path, port: int
) -> None:
    """Committed, but the new production container stopped (the cleanup's exit 3): recover
    starts it and removes blue, the one container that could serve instead, only once the
    new version answers."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"), running=False)
    engine.add(ours("app", "production", "d2"), running=False)
    journal(cfg, step="cleanup", blue_id=blue.id, committed=True)
    report = await recover(cfg, engine=engine)
    assert engine.calls == ["start app", f"rm {cfg.service.old_name}"]
    assert report.outcome == "the new version 2 serves"


async def test_a_blue_in_its_restart_loop_that_cannot_boot_is_not_brought_back(
    tmp_path: Path, port: int
) -> None:
    """Blue, crash-looping between its policy's restarts on the migrated schema, counts as
    not running: recover keeps the new version rather than rename blue back into its loop."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"))
    blue.restarting = True
    new = engine.add(ours("app", "production", "d2"), running=False)
    journal(cfg, step="switch", blue_id=blue.id, blue_was_running=True, blue_bootable=False)
    report = await recover(cfg, engine=engine)
    assert engine.containers[new.id].name == "app" and engine.containers[new.id].running
    assert report.outcome == "the new version 2 serves"


async def test_kill_before_the_switch_only_removes_the_deploys_own_containers(
    tmp_path: Path, port: int
) -> None:
    """Killed while green warmed up: green and migrate go; blue and older containers stay."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ours("app", "production", "d1", image="app:1"))
    engine.add(ours(cfg.service.green_name, "green", "d2"))
    engine.add(ours(cfg.service.migrate_name, "migrate", "d2"), running=False)
    journal(cfg, step="green-health")
    await recover(cfg, engine=engine)
    assert engine.names() == ["app"] and blue.id in engine.containers
    green, migrate = cfg.service.green_name, cfg.service.migrate_name
    assert engine.calls == [f"stop {green}", f"rm {green}", f"rm {migrate}"]


async def test_without_a_journal_a_renamed_blue_is_still_found(tmp_path: Path, port: int) -> None:
    """No journal (killed before writing it): production missing and X-old present is undone."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"), running=False)
    engine.add(ours(cfg.service.green_name, "green", "d9"))
    await recover(cfg, engine=engine)
    assert engine.names() == ["app"]
    assert engine.containers[next(iter(engine.containers))].running


async def test_foreign_container_on_the_production_name_is_not_touched(
    tmp_path: Path, port: int
) -> None:
    """If someone else's container holds the production name, recovery stops and says so."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"), running=False)
    engine.add(ContainerSpec(name="app", image="other:1"))
    journal(cfg, step="switch", blue_id=blue.id, blue_was_running=True)
    with pytest.raises(RecoveryFailed, match="app is taken by"):
        await recover(cfg, engine=engine)
    assert engine.names() == ["app", cfg.service.old_name]
    assert Journal.path_for(cfg.state_dir).exists()


async def test_recover_on_a_consistent_host_changes_nothing(tmp_path: Path, port: int) -> None:
    """Run on a healthy host with no journal, recover makes no change at all."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    engine.add(ours("app", "production", "d1"))
    report = await recover(cfg, engine=engine)
    assert engine.calls == [] and report.actions == []


async def test_blue_gone_keeps_the_new_container_instead_of_none(tmp_path: Path, port: int) -> None:
    """Regression: blue removed by hand mid-switch; recover keeps (and starts) the new one."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    new = engine.add(ours("app", "production", "d2"), running=False)
    engine.add(ours(cfg.service.green_name, "green", "d2"))
    journal(cfg, step="verify", blue_id="f" * 64, blue_was_running=True)
    report = await recover(cfg, engine=engine)
    assert engine.names() == ["app"] and engine.containers[new.id].running
    assert report.actions[0] == f"blue ({'f' * 12}) no longer exists: kept the new version"
    assert report.outcome == "the new version 2 serves"


async def test_an_unmanaged_old_container_is_left_to_the_operator(
    tmp_path: Path, port: int
) -> None:
    """Regression: one policy: recover, like the switch, never removes a -old it did not make."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    engine.add(ours("app", "production", "d1"))
    engine.add(ContainerSpec(name=cfg.service.old_name, image="app:0"), running=False)
    report = await recover(cfg, engine=engine)
    assert engine.names() == ["app", cfg.service.old_name]
    old = cfg.service.old_name
    assert report.actions == [
        f"left {old} in place: a container named {old} exists and was not made by "
        "rolling_update for app; remove it by hand"
    ]


def marker(pid: int) -> dict[str, str]:
    labels = marker_labels(service="app", deploy_id="d7", image="app:2", version="2")
    return {**labels, LABEL_MARKER_PID: str(pid)}


async def test_a_deploy_marked_on_the_engine_is_recovered_without_its_journal(
    tmp_path: Path, port: int
) -> None:
    """Killed deploy whose journal is in another checkout's state dir: the engine mark suffices."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"), running=False)
    engine.add(ours("app", "production", "d7"), running=False)
    engine.markers[marker_name("app")] = marker(pid=2**22 + 1)  # no such process
    report = await recover(cfg, engine=engine)
    assert engine.names() == ["app"] and engine.containers[blue.id].running
    assert engine.markers == {}
    assert report.unfinished == "deploy d7"


async def test_a_live_deploy_from_another_checkout_blocks_recover(
    tmp_path: Path, port: int
) -> None:
    """The engine mark of a running deploy (this host, live pid) makes recover refuse, exit 2."""
    import os

    from rolling_update import DeployLocked

    cfg = config(tmp_path, port)
    engine = FakeEngine()
    engine.add(ours("app", "production", "d1"))
    engine.markers[marker_name("app")] = marker(pid=os.getpid())
    with pytest.raises(DeployLocked, match="marked on the Docker engine"):
        await recover(cfg, engine=engine)
    assert engine.calls == []


async def test_a_blue_that_cannot_boot_is_not_restarted_by_recover(
    tmp_path: Path, port: int
) -> None:
    """Killed mid-switch after a failed blue_check: recover keeps the new version, not blue."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"), running=False)
    new = engine.add(ours("app", "production", "d2"), running=False)
    journal(cfg, step="switch", blue_id=blue.id, blue_was_running=True, blue_bootable=False)
    report = await recover(cfg, engine=engine)
    assert engine.names() == ["app"] and engine.containers[new.id].running
    assert report.outcome == "the new version 2 serves"


async def test_a_blue_asked_to_drain_is_restarted_behind_the_redirect(
    tmp_path: Path, port: int, green_port: int
) -> None:
    """Killed between blue's drain ask and its stop: blue, still running but draining, is
    restarted while green holds the port, which comes back once blue answers."""
    cfg = config(tmp_path, port, green_port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name="app-old", image="app:1"))
    engine.add(ours("app", "production", "d2"), running=False)
    engine.add(ours("app-green", "green", "d2"))
    journal(
        cfg, step="switch", blue_id=blue.id, blue_was_running=True, redirect=True,
        blue_told_to_drain=True,
    )  # fmt: skip
    firewall = RecordingFirewall()
    await firewall.redirect("t", port, green_port)
    report = await recover(cfg, engine=engine, firewall=firewall)
    assert report.actions == [
        "removed app (production of the unfinished deploy)",
        "renamed app-old back to app",
        "restarted app (it was asked to drain)",
        f"removed the redirect of port {port} to green",
        "removed app-green (green of the unfinished deploy)",
    ]
    assert engine.calls[-6:-2] == ["rm app", "rename app-old app", "stop app", "start app"]
    assert engine.names() == ["app"] and engine.containers[blue.id].running


async def test_a_vanished_blue_fails_the_undo_with_its_own_error(tmp_path: Path, port: int) -> None:
    """Switch.compensate raises RestoreFailed (not a bare RollingUpdateError) when blue is gone."""
    import aiohttp

    from rolling_update import DeployContext, RestoreFailed
    from steps import Switch

    cfg = config(tmp_path, port)
    engine = FakeEngine()
    async with aiohttp.ClientSession() as http:
        ctx = DeployContext(
            config=cfg,
            engine=engine,
            http=http,
            deploy_id="d2",
            release=Release(version="2", image="a:2", env={}),
        )
        ctx.give(Switched(blue_id="e" * 64, blue_was_running=True))
        switch = Switch(cfg.service, cfg.tick, cfg.health, cfg.verify)
        with pytest.raises(RestoreFailed, match="no longer exists"):
            await switch.compensate(ctx)


async def test_recover_decides_first_and_does_exactly_what_it_decided(
    tmp_path: Path, port: int
) -> None:
    """The actions decided (what plan shows) change nothing, and recover then does just those."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name="app-old", image="app:1"), running=False)
    engine.add(ours("app", "production", "d2"), running=False)
    engine.add(ours("app-green", "green", "d2"))
    journal(cfg, step="switch", blue_id=blue.id, blue_was_running=True)
    before = engine.names()
    shown = await preview(cfg, engine, LocalFirewall())
    assert engine.names() == before  # deciding changed nothing
    assert shown is not None and shown["outcome"] == "the previous version serves"
    assert shown["actions"] == [
        "removed app (production of the unfinished deploy)",
        "removed app-green (green of the unfinished deploy)",
        "renamed app-old back to app",
        "started app (the previous version)",
    ]
    report = await recover(cfg, engine=engine)
    assert report.actions == shown["actions"]
    assert await preview(cfg, engine, LocalFirewall()) is None


async def test_recover_hands_the_port_to_green_before_it_removes_a_serving_container(
    tmp_path: Path, port: int, green_port: int
) -> None:
    """Killed in the soak: production's port goes to green before the new container goes, and
    comes back only once blue answers; green goes last."""
    cfg = config(tmp_path, port, green_port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name="app-old", image="app:1"), running=False)
    new = engine.add(ours("app", "production", "d2"))
    engine.add(ours("app-green", "green", "d2"))
    journal(cfg, step="soak", blue_id=blue.id, blue_was_running=True)
    firewall = RecordingFirewall()
    shown = await preview(cfg, engine, firewall)
    assert shown is not None and shown["actions"][0].startswith("redirected port")
    report = await recover(cfg, engine=engine, firewall=firewall)
    assert (
        report.actions
        == shown["actions"]
        == [
            f"redirected port {port} to green while production is replaced",
            "removed app (production of the unfinished deploy)",
            "renamed app-old back to app",
            "started app (the previous version)",
            f"removed the redirect of port {port} to green",
            "removed app-green (green of the unfinished deploy)",
        ]
    )
    # Green's exit reset connections it took: their conntrack entries go with it.
    assert firewall.changes == [
        f"redirect {port} -> {green_port}",
        "remove",
        f"forget {port} <- {green_port}",
    ]
    assert new.id not in engine.containers and engine.names() == ["app"]
    assert engine.containers[blue.id].running
