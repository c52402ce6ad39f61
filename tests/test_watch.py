"""Watching a container: a death is never missed, whatever the event stream does."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import anyio
import pytest

from rolling_update import ContainerSpec, GreenFailed
from rolling_update._engine.model import ContainerEvent
from rolling_update._watch.watch import watching
from rolling_update.testing import FakeContainer, FakeEngine
from tests.support import unit_config, unit_context

pytestmark = pytest.mark.anyio


async def watch_green(
    tmp_path: Path,
    engine: FakeEngine,
    green: FakeContainer,
    *,
    seconds: float | None = None,
    beside: str | None = None,
) -> None:
    """Green watched while waiting for health, for ``seconds`` (None: until it fails), blue
    ``beside`` it."""
    async with aiohttp.ClientSession() as http:
        ctx = unit_context(unit_config(tmp_path), engine, http)
        async with watching(
            ctx,
            container_id=green.id,
            container_name="app-green",
            since_nano=0,
            failure=GreenFailed,
            doing="waiting for health",
            beside=beside,
        ):
            if seconds is None:
                await anyio.sleep_forever()
            else:
                await anyio.sleep(seconds)


async def watch_until_failure(
    tmp_path: Path, engine: FakeEngine, green: FakeContainer, beside: str | None = None
) -> str:
    with anyio.fail_after(5), pytest.raises(GreenFailed) as caught:
        await watch_green(tmp_path, engine, green, beside=beside)
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
    assert message == "app-green exited with code 3 while waiting for health"


async def test_a_restart_between_events_is_a_failure(tmp_path: Path) -> None:
    """A container that restarted (restart_count > 0) counts as dead even if it runs now."""
    engine = FakeEngine()
    green = engine.add(ContainerSpec(name="app-green", image="app:2"))
    green.restart_count = 1
    message = await watch_until_failure(tmp_path, engine, green)
    assert message == "app-green restarted 1 time(s) while waiting for health"


async def test_an_oom_event_alone_is_not_a_death(tmp_path: Path) -> None:
    """An ``oom`` event for a container that runs on (cgroup v1 sends it to every container
    under a parent that ran out, the OOM killer's victim another) does not end its watch."""
    engine = FakeEngine()
    green = engine.add(ContainerSpec(name="app-green", image="app:2"))
    green.running = True
    engine.events.append(ContainerEvent("oom", green.id, time_nano=1))
    await watch_green(tmp_path, engine, green, seconds=1.2)  # past two checks of its state


@pytest.mark.parametrize(
    ("oom_killed", "how"),
    [
        (True, "was OOM-killed (SIGKILL, exit 137: out of memory, at its own limit or its host's)"),
        (False, "was killed (SIGKILL, exit 137: out of memory?)"),
    ],
)
async def test_a_sigkill_says_out_of_memory_as_the_engine_saw_it(
    tmp_path: Path, oom_killed: bool, how: str
) -> None:
    """A container killed with exit 137 is said to be OOM-killed when the engine's state
    says it saw the OOM killer, and possibly out of memory when it does not."""
    engine = FakeEngine()
    green = engine.add(ContainerSpec(name="app-green", image="app:2"))
    green.exit_code, green.oom_killed = 137, oom_killed
    engine.events.append(ContainerEvent("die", green.id, time_nano=1, exit_code=137))
    message = await watch_until_failure(tmp_path, engine, green)
    assert message == f"app-green {how} while waiting for health"


async def test_blue_killed_beside_green_ends_the_wait(tmp_path: Path) -> None:
    """Blue, running beside green, killed (the host out of memory): the wait ends at once,
    saying blue died and how, though green runs on."""
    engine = FakeEngine()
    blue = engine.add(ContainerSpec(name="app", image="app:1"))
    green = engine.add(ContainerSpec(name="app-green", image="app:2"))
    blue.running = green.running = True

    async def kill_blue() -> None:
        await anyio.sleep(0.2)
        blue.running, blue.exit_code, blue.oom_killed = False, 137, True

    async with anyio.create_task_group() as tg:
        tg.start_soon(kill_blue)
        message = await watch_until_failure(tmp_path, engine, green, beside=blue.id)
    assert message == (
        "blue app was OOM-killed (SIGKILL, exit 137: out of memory, at its own limit or its "
        "host's), beside app-green, while waiting for health"
    )
