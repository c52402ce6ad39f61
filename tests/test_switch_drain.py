"""The switch's ask to blue before its connection wait (switch.drain_signal, drain_request)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from rolling_update import Config, ConfigError, ContainerSpec, DeployContext, EngineError
from rolling_update._config.settings import parse_config
from rolling_update._deploy.records import Preflight, Redirected, Switched
from rolling_update._deploy.release import Release
from rolling_update.testing import FakeEngine
from steps import Switch
from tests.support import RecordingFirewall, free_port

pytestmark = pytest.mark.anyio


class Blue:
    """Blue's own port: records what it was asked, answers ``status`` (healthy on /health)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 200
        self.asked: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/health":
            return web.json_response({"status": "healthy"})
        self.asked.append(f"{request.method} {request.path}")
        return web.json_response({}, status=self.status)


@pytest.fixture
async def blue() -> AsyncIterator[Blue]:
    found = Blue()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    yield found
    await runner.cleanup()


def config(tmp_path: Path, port: int, **switch: Any) -> Config:
    data: dict[str, Any] = {
        "service": {"name": "app", "green_name": "app-green", "port": port, "green_port": 2},
        "image": {"name": "app:{version}", "version_file": "p.json"},
        "health": {"path": "/health", "expect_json": {"status": "healthy"}},
        "tick": {"enabled": False},
        "verify": {"timeout": 2, "interval": 0.05},
        "switch": switch,
        "state": {"dir": "state"},
    }
    return parse_config(data, base_dir=tmp_path, environ={}, source="t.toml")


def context(cfg: Config, engine: FakeEngine, http: aiohttp.ClientSession) -> DeployContext:
    found = Preflight(blue=None, blue_health=None, handoff=True)
    ctx = DeployContext(
        config=cfg,
        engine=engine,
        http=http,
        deploy_id="d2",
        release=Release(version="2", image="app:2", env={}),
        found=found,
        # Blue's connections are counted on this fake host: none.
        firewall=RecordingFirewall(),
    )
    ctx.give(Redirected(active=True))
    return ctx


async def test_blue_is_asked_after_its_rename_and_before_its_stop(
    tmp_path: Path, blue: Blue
) -> None:
    """The signal through the engine, then the request to blue's own port, both logged; the
    switch then stops blue as before, and its undo knows blue was asked."""
    cfg = config(tmp_path, blue.port, drain_signal="usr2", drain_request="POST /drain 204")
    blue.status = 204
    engine = FakeEngine(images={"app:1", "app:2"})
    engine.add(ContainerSpec(name="app", image="app:1"))
    async with aiohttp.ClientSession() as http:
        ctx = context(cfg, engine, http)
        with capture_logs() as logs:
            await Switch(cfg.service, cfg.tick, cfg.health, cfg.verify).run(ctx)
    old = cfg.service.old_name
    assert engine.calls[:4] == [
        f"rename app {old}",
        "create app",
        f"kill {old} SIGUSR2",
        f"stop {old}",
    ]
    assert blue.asked == ["POST /drain"]
    said = {e["event"]: e for e in logs}
    assert said["switch.drain_signal"]["signal"] == "SIGUSR2"
    assert said["action.started"]["action"] == "switch.drain_request"
    assert "action.done" in said and said["switch.blue_drained"]["left"] == 0
    assert ctx.get(Switched).told_to_drain
    # Blue stopped behind the redirect: the connections its exit reset are forgotten.
    assert isinstance(ctx.firewall, RecordingFirewall)
    assert ctx.firewall.changes == [f"forget {blue.port} <- {blue.port}"]


async def test_a_failed_ask_is_logged_and_the_switch_goes_on(tmp_path: Path, blue: Blue) -> None:
    """An engine that refuses the signal and a request answered 500: two warnings, no
    failure; blue is still stopped and the new container started."""
    cfg = config(tmp_path, blue.port, drain_signal="SIGUSR2", drain_request="POST /drain")
    blue.status = 500
    engine = FakeEngine(images={"app:1", "app:2"})
    engine.add(ContainerSpec(name="app", image="app:1"))
    engine.failing["kill"] = EngineError("kill", "app", 500, "cannot kill")
    async with aiohttp.ClientSession() as http:
        ctx = context(cfg, engine, http)
        with capture_logs() as logs:
            await Switch(cfg.service, cfg.tick, cfg.health, cfg.verify).run(ctx)
    warned = {e["event"] for e in logs if e["log_level"] == "warning"}
    assert {"switch.drain_signal", "action.failed"} <= warned
    assert blue.asked == ["POST /drain"]
    assert engine.calls[-2:] == [f"stop {cfg.service.old_name}", "start app"]


async def test_a_blue_asked_to_drain_is_restarted_by_the_undo(tmp_path: Path, blue: Blue) -> None:
    """Rolled back before its stop, a blue that was asked to drain is stopped and started
    again (a new process serves as blue did), then waited for until it answers."""
    cfg = config(tmp_path, blue.port, drain_signal="SIGUSR2")
    engine = FakeEngine(images={"app:1"})
    found = engine.add(ContainerSpec(name=cfg.service.old_name, image="app:1"))
    async with aiohttp.ClientSession() as http:
        ctx = context(cfg, engine, http)
        ctx.give(Switched(blue_id=found.id, blue_was_running=True, told_to_drain=True))
        await Switch(cfg.service, cfg.tick, cfg.health, cfg.verify).compensate(ctx)
    assert engine.calls == [f"rename {cfg.service.old_name} app", "stop app", "start app"]
    assert engine.containers[found.id].running


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("drain_signal", "SIGNOPE", "is not a signal name"),
        ("drain_signal", "SIGKILL", "cannot be handled"),
        ("drain_request", "/drain", "is not 'METHOD /path'"),
        ("drain_request", "POST drain", "is not 'METHOD /path'"),
        ("drain_request", "POST /drain 2000", "is not 100..599"),
    ],
)
def test_a_bad_ask_is_a_config_error_naming_its_key(
    tmp_path: Path, key: str, value: str, why: str
) -> None:
    """A signal blue cannot get or a request line that is not one fails the config, by key."""
    with pytest.raises(ConfigError, match=f"switch.{key}: .*{why}"):
        config(tmp_path, 1, **{key: value})
