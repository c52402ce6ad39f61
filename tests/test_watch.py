"""Watching a container: a death is never missed, whatever the event stream does."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import anyio
import pytest

from rolling_update import ContainerSpec, DeployContext, GreenFailed
from rolling_update._config.settings import parse_config
from rolling_update._deploy.release import Release
from rolling_update._watch.watch import watching
from rolling_update.testing import FakeContainer, FakeEngine

pytestmark = pytest.mark.anyio


def context(tmp_path: Path, engine: FakeEngine, http: aiohttp.ClientSession) -> DeployContext:
    cfg = parse_config(
        {
            "service": {"name": "app", "green_name": "app-green", "port": 1, "green_port": 2},
            "image": {"name": "app:{version}", "version_file": "p.json"},
        },
        base_dir=tmp_path,
        environ={},
        source="t.toml",
    )
    return DeployContext(
        config=cfg,
        engine=engine,
        http=http,
        deploy_id="d",
        release=Release(version="2", image="app:2", env={}),
    )


async def watch_until_failure(tmp_path: Path, engine: FakeEngine, green: FakeContainer) -> str:
    async with aiohttp.ClientSession() as http:
        ctx = context(tmp_path, engine, http)
        with anyio.fail_after(5), pytest.raises(GreenFailed) as caught:
            async with watching(
                ctx,
                container_id=green.id,
                container_name="app-green",
                since_nano=0,
                failure=GreenFailed,
                doing="waiting for health",
            ):
                await anyio.sleep_forever()
    return str(caught.value)


async def test_death_after_the_event_stream_ended_is_still_seen(tmp_path: Path) -> None:
    """Regression: the stream ends (daemon restart), green then dies silently: the watch fails."""
    engine = FakeEngine()
    engine.event_stream_ends = True
    green = engine.add(ContainerSpec(name="app-green", image="app:2"))

    async def die_quietly() -> None:
        await anyio.sleep(0.2)
        green.running, green.exit_code = False, 3

    async with anyio.create_task_group() as tg:
        tg.start_soon(die_quietly)
        message = await watch_until_failure(tmp_path, engine, green)
    assert message == "app-green exited (last exit code 3) while waiting for health"


async def test_a_restart_between_events_is_a_failure(tmp_path: Path) -> None:
    """A container that restarted (restart_count > 0) counts as dead even if it runs now."""
    engine = FakeEngine()
    green = engine.add(ContainerSpec(name="app-green", image="app:2"))
    green.restart_count = 1
    message = await watch_until_failure(tmp_path, engine, green)
    assert message == "app-green restarted 1 time(s) (last exit code 0) while waiting for health"
