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
from rolling_update._config import parse_config
from rolling_update._engine import LABEL_DEPLOY, LABEL_MANAGED, LABEL_ROLE, LABEL_SERVICE
from rolling_update._recover import recover
from rolling_update._state import Journal
from rolling_update.testing import FakeEngine
from tests.support import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """A healthy stand-in answering on production's port: the engine is fake, HTTP is not."""

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


def config(tmp_path: Path, port: int) -> Config:
    data = {
        "service": {"name": "app", "green_name": "app-green", "port": port, "green_port": 1},
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
    j = Journal.begin(cfg.state.dir, deploy_id="d2", service="app", image="app:2", version="2")
    j.update(**facts)


async def test_kill_mid_switch_restores_blue(tmp_path: Path, port: int) -> None:
    """Blue renamed and stopped, new production created: blue gets its name back and runs."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name="app-old", image="app:1"), running=False)
    engine.add(ours("app", "production", "d2"), running=False)
    engine.add(ours("app-green", "green", "d2"))
    journal(cfg, step="switch", blue_id=blue.id, blue_was_running=True)
    report = await recover(cfg, engine=engine)
    assert engine.names() == ["app"]
    assert engine.containers[blue.id].name == "app" and engine.containers[blue.id].running
    assert report.outcome == "the previous version serves"
    assert not Journal.path_for(cfg.state.dir, "app").exists()


async def test_kill_after_verification_keeps_the_new_version(tmp_path: Path, port: int) -> None:
    """A verified deploy killed in cleanup: green and old blue go, the new production stays."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name="app-old", image="app:1"), running=False)
    new = engine.add(ours("app", "production", "d2"))
    engine.add(ours("app-green", "green", "d2"))
    journal(cfg, step="cleanup", blue_id=blue.id, committed=True)
    report = await recover(cfg, engine=engine)
    assert engine.names() == ["app"] and engine.containers[new.id].name == "app"
    assert report.outcome == "the new version 2 serves"


async def test_kill_before_the_switch_only_removes_the_deploys_own_containers(
    tmp_path: Path, port: int
) -> None:
    """Killed while green warmed up: green and migrate go; blue and older containers stay."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ours("app", "production", "d1", image="app:1"))
    engine.add(ours("app-green", "green", "d2"))
    engine.add(ours("app-migrate", "migrate", "d2"), running=False)
    journal(cfg, step="green-health")
    await recover(cfg, engine=engine)
    assert engine.names() == ["app"] and blue.id in engine.containers
    assert engine.calls == ["stop app-green", "rm app-green", "rm app-migrate"]


async def test_without_a_journal_a_renamed_blue_is_still_found(tmp_path: Path, port: int) -> None:
    """No journal (killed before writing it): production missing and X-old present is undone."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    engine.add(ContainerSpec(name="app-old", image="app:1"), running=False)
    engine.add(ours("app-green", "green", "d9"))
    await recover(cfg, engine=engine)
    assert engine.names() == ["app"]
    assert engine.containers[next(iter(engine.containers))].running


async def test_foreign_container_on_the_production_name_is_not_touched(
    tmp_path: Path, port: int
) -> None:
    """If someone else's container holds the production name, recovery stops and says so."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name="app-old", image="app:1"), running=False)
    engine.add(ContainerSpec(name="app", image="other:1"))
    journal(cfg, step="switch", blue_id=blue.id, blue_was_running=True)
    with pytest.raises(RecoveryFailed, match="app is taken by"):
        await recover(cfg, engine=engine)
    assert engine.names() == ["app", "app-old"]
    assert Journal.path_for(cfg.state.dir, "app").exists()


async def test_recover_on_a_consistent_host_changes_nothing(tmp_path: Path, port: int) -> None:
    """Run on a healthy host with no journal, recover makes no change at all."""
    cfg = config(tmp_path, port)
    engine = FakeEngine()
    engine.add(ours("app", "production", "d1"))
    report = await recover(cfg, engine=engine)
    assert engine.calls == [] and report.actions == []
