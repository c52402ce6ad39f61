"""Waiting on a container with its logs, engine events and memory at once.

One task group per wait (:func:`watching`): the container's log lines stream
into the structured log, its engine events abort the wait the moment it dies
or restarts, its memory is sampled against a bar, and an optional absolute
deadline (the two-container limit) ends it. The wait's own deadline is the
caller's (``anyio.fail_after`` around it).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import structlog
from anyio.abc import TaskStatus

from rolling_update._deploy.context import DeployContext
from rolling_update._engine.model import ContainerEvent, ContainerInfo
from rolling_update._errors import ContainerFailure, EngineUnavailable
from rolling_update._observe.logs import redactor
from rolling_update._watch.tasks import task_group

_FATAL_ACTIONS = {"die", "destroy"}


# The exit code of a process killed by SIGKILL: the kernel's OOM killer, or a kill.
_SIGKILLED = 137


def ended(exit_code: int | None, *, oom_killed: bool, restarts: int = 0) -> str:
    """How a container's run ended: the one place a death is told. ``exit_code`` is
    None when unknown (a container its policy restarted says 0 again).

    The engine's ``oom`` event is not a death: under cgroup v1 it is sent to every
    container below a memory cgroup that ran out (the host's, a parent's), and the
    kernel's OOM killer then kills one process among them all, maybe another container's.
    A container it killed exits 137; the engine's State.OOMKilled says it saw an OOM
    (its own limit, inherited from blue, or the host's: ``limits.green_memory_mb`` is
    the tool's own, lower bar), a 137 without it may still be one.
    """
    how: str | None
    if exit_code == _SIGKILLED and oom_killed:
        how = "was OOM-killed (SIGKILL, exit 137: out of memory, at its own limit or its host's)"
    elif exit_code is None and oom_killed:
        how = "was OOM-killed (out of memory, at its own limit or its host's)"
    elif exit_code == _SIGKILLED:
        how = "was killed (SIGKILL, exit 137: out of memory?)"
    else:
        how = None if exit_code is None else f"exited with code {exit_code}"
    if restarts:
        return f"restarted {restarts} time(s)" + (f"; last it {how}" if how else "")
    return how or "exited"


def ended_as_found(info: ContainerInfo, restarts: int) -> str:
    """:func:`ended` from a container's state: stopped, its exit code; running again after
    ``restarts`` restarts by its policy, how its last run ended, as far as the state knows."""
    if not info.running:
        return ended(info.exit_code, oom_killed=info.oom_killed)
    return ended(None, oom_killed=info.oom_killed, restarts=restarts)


# The container's state is read this often besides its events; a death the
# event stream did not deliver is seen within this time.
_STATE_CHECK_INTERVAL = 0.5


_EVENT_RECONNECTS = 5


_EVENT_RECONNECT_PAUSE = 0.2


@dataclass
class Watch:
    """What :func:`watching` saw: the container's last log lines and memory peak."""

    container_name: str
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=30))
    memory_peak: int = 0
    logs_ended: anyio.Event = field(default_factory=anyio.Event)


@asynccontextmanager
async def watching(
    ctx: DeployContext,
    *,
    container_id: str,
    container_name: str,
    since_nano: int,
    failure: type[ContainerFailure],
    doing: str,
    replay_logs: bool = True,
    memory_limit: int | None = None,
    deadline: float | None = None,
    deadline_reason: str = "",
    beside: str | None = None,
) -> AsyncIterator[Watch]:
    """Run the body while watching a container; abort it the moment the container fails.

    Meanwhile the container's log lines stream into the log (from its start
    when ``replay_logs``, else only new ones), and its engine events, memory
    and the monotonic ``deadline`` are watched. A ``die``/``destroy``
    event, memory above ``memory_limit`` bytes, or the deadline passing raises
    ``failure`` with the last log lines, cancelling the body. The events are
    backed by the container's state (inspect, twice a second): a death is
    never missed, not when the event stream ends, nor past the engine's replay.

    ``beside`` is blue's id, when blue runs beside it: its state is read as often, and
    its death (a restart included: its policy may bring it back at once) ends the wait
    as well. Two versions that do not fit the host's memory side by side get one of
    them killed, blue as likely as the new one: the rollback brings blue back (or finds
    it back) at once, rather than when the new one fails on its own.
    """
    log = structlog.get_logger()
    watch = Watch(container_name)

    def fail(what: str) -> ContainerFailure:
        return failure(
            f"{container_name} {what} while {doing}",
            container=container_name,
            last_logs=list(watch.tail),
        )

    async def on_line(line: str) -> None:
        # Blanked at the source: a caller's own logging set-up has no redactor.
        line = redactor.scrub(line)
        watch.tail.append(line)
        log.info("container.log", container=container_name, line=line)

    async def follow(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await ctx.engine.follow_logs(
                container_id, on_line, replay=replay_logs, task_status=task_status
            )
        finally:
            watch.logs_ended.set()

    async def died(what: str) -> ContainerFailure:
        # The log follow ends when the container exits: wait for it (briefly)
        # so that the dying lines are in the error.
        with anyio.move_on_after(0.3):
            await watch.logs_ended.wait()
        return fail(what)

    async def on_event(event: ContainerEvent) -> None:
        if event.action == "oom":
            # Its death, if it is the OOM killer's victim, comes as its own ``die``.
            log.warning("container.oom", container=container_name)
        elif event.action == "destroy":
            raise await died("was removed")
        elif event.action in _FATAL_ACTIONS:
            oom_killed = False
            if event.exit_code == _SIGKILLED:
                # Its state says whether the engine saw the OOM killer take it.
                with contextlib.suppress(EngineUnavailable):
                    info = await ctx.engine.inspect(container_id)
                    oom_killed = info is not None and info.oom_killed
            raise await died(ended(event.exit_code, oom_killed=oom_killed))

    async def events(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # The stream ends when the daemon restarts (or a proxy drops it): pick it
        # up again from the last event seen. What happened in between is caught
        # by check_state, which also covers the engine's 256-event replay limit.
        since = since_nano
        status: TaskStatus[None] = task_status

        async def seen(event: ContainerEvent) -> None:
            nonlocal since
            since = max(since, event.time_nano + 1)
            await on_event(event)

        for attempt in range(_EVENT_RECONNECTS + 1):
            if attempt:
                log.warning("container.events.reconnect", container=container_name)
                await anyio.sleep(_EVENT_RECONNECT_PAUSE)
            await ctx.engine.watch_events(container_id, since, seen, task_status=status)
            status = anyio.TASK_STATUS_IGNORED
        raise fail("could not be watched: the engine's event stream kept ending")

    async def read_states(
        name: str, judge: Callable[[ContainerInfo | None], Awaitable[None]]
    ) -> None:
        # Bounded by the watch itself: cancelled when the body ends.
        cut = False
        while True:
            try:
                info = await ctx.engine.inspect(name)
            except EngineUnavailable:
                # One call cut by an engine restart is asked again (its connection waits
                # for the engine to be back); two in a row are the engine's failure.
                if cut:
                    raise
                cut = True
                continue
            cut = False
            await judge(info)
            await anyio.sleep(_STATE_CHECK_INTERVAL)

    async def judge_state(info: ContainerInfo | None) -> None:
        if info is None:
            raise await died("was removed")
        if not info.running or info.restart_count > 0:
            raise await died(ended_as_found(info, info.restart_count))
        if info.health == "unhealthy" and ctx.config.health.docker != "ignore":
            raise fail("is unhealthy by its Docker healthcheck")

    async def check_beside(blue_id: str) -> None:
        first = await ctx.engine.inspect(blue_id)
        before = 0 if first is None else first.restart_count

        async def judge_blue(info: ContainerInfo | None) -> None:
            if info is None:
                what = "was removed"
            elif not info.running or info.restart_count > before:
                what = ended_as_found(info, info.restart_count - before)
            else:
                return
            # Blue's own lines are not followed here: none are shown as its last.
            name = ctx.config.service.name
            raise failure(
                f"blue {name} {what}, beside {container_name}, while {doing}", container=name
            )

        await read_states(blue_id, judge_blue)

    async def on_memory(used: int) -> None:
        if used > watch.memory_peak:
            watch.memory_peak = used
            log.debug("container.memory", container=container_name, mb=round(used / 2**20, 1))
        if memory_limit is not None and used > memory_limit:
            raise fail(
                f"uses {used / 2**20:.0f} MB, above the limit of {memory_limit / 2**20:.0f} MB"
            )

    async def expire() -> None:
        assert deadline is not None
        await anyio.sleep(max(0.0, deadline - time.monotonic()))
        raise fail(deadline_reason)

    async with task_group() as tg:
        await tg.start(follow)
        await tg.start(events)
        tg.start_soon(read_states, container_id, judge_state)
        if beside is not None:
            tg.start_soon(check_beside, beside)
        if memory_limit is not None:
            await tg.start(ctx.engine.watch_memory, container_id, on_memory)
        if deadline is not None:
            tg.start_soon(expire)
        yield watch
        tg.cancel_scope.cancel()
