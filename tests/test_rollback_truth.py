"""A rollback is "the previous version serves" only when the host shows it."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from rolling_update import Config, ContainerSpec, RestoreFailed
from rolling_update._cli.exits import outcome
from rolling_update._config.settings import parse_config
from rolling_update._deploy.guard import ConfirmBlue
from rolling_update._deploy.records import BlueChecked, GreenStarted, Preflight, Switched
from rolling_update._deploy.saga import SagaState
from rolling_update._watch.probe import Answer, HealthBaseline
from rolling_update.testing import FakeEngine
from steps import Switch, TagImage
from tests.support import free_port, unit_context

pytestmark = pytest.mark.anyio


class Health:
    """A health endpoint on a real port whose body the test sets."""

    def __init__(self) -> None:
        self.status = "healthy"
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        return web.json_response({"status": self.status})


@pytest.fixture
async def health() -> AsyncIterator[Health]:
    found = Health()
    app = web.Application()
    app.router.add_get("/health", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    yield found
    await runner.cleanup()


def config(tmp_path: Path, port: int, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "service": {"name": "app", "green_name": "app-green", "port": port, "green_port": 2},
        "image": {"name": "app:{version}", "version_file": "p.json", "tags": ["latest"]},
        "health": {"path": "/health", "expect_json": {"status": "healthy"}},
        "verify": {"timeout": 0.5, "interval": 0.05},
        "state": {"dir": "state"},
        **sections,
    }
    return parse_config(data, base_dir=tmp_path, environ={}, source="t.toml")


def healthy_baseline(cfg: Config) -> HealthBaseline:
    return HealthBaseline.of(Answer("u", status=200, body={"status": "healthy"}), cfg.health)


async def test_a_blue_left_degraded_is_not_rolled_back(tmp_path: Path, health: Health) -> None:
    """Blue never stopped but answering degraded after the undo (drained loop): RestoreFailed."""
    cfg = config(tmp_path, health.port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name="app", image="app:1"))
    async with aiohttp.ClientSession() as http:
        found = Preflight(blue=await engine.inspect(blue.id), blue_health=healthy_baseline(cfg))
        ctx = unit_context(cfg, engine, http, found)
        guard = ConfirmBlue(cfg.service, cfg.health, cfg.verify)
        await guard.compensate(ctx)
        health.status = "degraded"
        with pytest.raises(RestoreFailed, match="not as healthy as it was"):
            await guard.compensate(ctx)


async def test_another_container_under_blues_name_is_not_blue(
    tmp_path: Path, health: Health
) -> None:
    """A healthy answer from something else under production's name is not blue restored."""
    cfg = config(tmp_path, health.port)
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"), running=False)
    engine.add(ContainerSpec(name="app", image="app:2"))
    async with aiohttp.ClientSession() as http:
        stopped = await engine.inspect(blue.id)
        assert stopped is not None
        running = replace(stopped, running=True)  # as the preflight found it, serving
        ctx = unit_context(cfg, engine, http, Preflight(blue=running, blue_health=None))
        with pytest.raises(RestoreFailed, match="is not the running app"):
            await ConfirmBlue(cfg.service, cfg.health, cfg.verify).compensate(ctx)


async def test_a_blue_that_cannot_boot_is_not_restarted(tmp_path: Path, health: Health) -> None:
    """After a failed blue_check, the undo of the switch leaves both containers and says why."""
    cfg = config(tmp_path, health.port, migrate={"blue_check": ["node", "src/selfcheck.js"]})
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"), running=False)
    production = engine.add(ContainerSpec(name="app", image="app:2"))
    async with aiohttp.ClientSession() as http:
        ctx = unit_context(cfg, engine, http)
        ctx.give(Switched(blue_id=blue.id, blue_was_running=True))
        ctx.give(BlueChecked(bootable=False))
        switch = Switch(cfg.service, cfg.tick, cfg.health, cfg.verify)
        with pytest.raises(RestoreFailed, match="cannot boot on the schema"):
            await switch.compensate(ctx)
    assert not engine.containers[blue.id].running
    assert engine.containers[production.id].running and engine.names() == [
        "app",
        cfg.service.old_name,
    ]


async def test_extra_tags_follow_the_deploy_and_go_back_on_rollback(tmp_path: Path) -> None:
    """image.tags point at the new image for the switch and at the old one after a rollback."""
    cfg = config(tmp_path, 3)
    engine = FakeEngine(images={"app:1", "app:2", "app:latest"})
    engine.aliases["app:latest"] = "app:1"
    async with aiohttp.ClientSession() as http:
        ctx = unit_context(cfg, engine, http)
        step = TagImage(cfg.image)
        await step.run(ctx)
        assert await engine.image_id("app:latest") == await engine.image_id("app:2")
        await step.compensate(ctx)
        assert await engine.image_id("app:latest") == await engine.image_id("app:1")


async def test_a_tag_that_named_nothing_is_removed_on_rollback(tmp_path: Path) -> None:
    """A first latest made by the deploy does not outlive its rollback."""
    cfg = config(tmp_path, 3)
    engine = FakeEngine(images={"app:2"})
    async with aiohttp.ClientSession() as http:
        ctx = unit_context(cfg, engine, http)
        step = TagImage(cfg.image)
        await step.run(ctx)
        assert "app:latest" in engine.images
        await step.compensate(ctx)
        assert "app:latest" not in engine.images


async def test_waits_before_the_switch_share_the_dual_run_budget(tmp_path: Path) -> None:
    """A wait's deadline is its own or what is left of two_containers less blue's stop."""
    cfg = config(tmp_path, 3, limits={"two_containers": 100})
    async with aiohttp.ClientSession() as http:
        ctx = unit_context(cfg, FakeEngine(), http)
        assert ctx.wait_limit(300) == (300, "300s")
        ctx.give(GreenStarted(id="g", started=time.monotonic() - 80, since_nano=0))
        limit, bound = ctx.wait_limit(300)
        # 100 s budget, 80 s gone, blue's stop (service.stop_timeout = 10 s) set aside.
        assert 9 < limit <= 10 and "limits.two_containers = 100s" in bound
        assert ctx.wait_limit(5) == (5, "5s")
        ctx.give(GreenStarted(id="g", started=time.monotonic() - 200, since_nano=0))
        assert ctx.wait_limit(300)[0] == 0


def test_an_interrupt_whose_rollback_failed_exits_3() -> None:
    """SIGINT during a deploy whose undo did not finish: exit 3, not 130 "previous serves"."""
    state = SagaState()
    state.begin("switch")
    state.failures = [("guard", "blue is back as app but not as healthy as it was")]
    code, line = outcome(None, state, signal.SIGINT)
    assert code == 3 and line is not None and "not as healthy" in line
    assert "previous version serves" not in line
