"""Waiting on a container with its logs, engine events, memory and health at once.

One task group per wait (:func:`watching`): the container's log lines stream
into the structured log, its engine events abort the wait the moment it dies
or restarts, its memory is sampled against a bar, and an optional absolute
deadline (the two-container limit) ends it. :func:`await_healthy` adds the
health poller, which ends the wait when an answer is acceptable. The wait's
own deadline is the caller's (``anyio.fail_after`` around it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from rolling_update._config.settings import HealthConfig, ServiceConfig, VerifyConfig
from rolling_update._deploy.context import DeployContext
from rolling_update._engine.model import ContainerEvent
from rolling_update._errors import ContainerFailure, RestoreFailed, RollingUpdateError
from rolling_update._observe.logs import redactor
from rolling_update._watch.probe import (
    Answer,
    HealthBaseline,
    check_health,
    probe,
)

_FATAL_ACTIONS = {"die", "oom", "destroy"}
# The container's state is read this often besides its events; a death the
# event stream did not deliver is seen within this time.
_STATE_CHECK_INTERVAL = 0.5
_EVENT_RECONNECTS = 5
_EVENT_RECONNECT_PAUSE = 0.2
# How often a container is probed until it first answers, when something waits for that.
_ANSWER_POLL = 0.02


@dataclass
class LastProbe:
    """The latest answer and verdict of a poll, for the error when its deadline passes."""

    answer: Answer | None = None
    verdict: str | None = None

    def explain(self) -> str:
        if self.answer is None:
            return "no probe finished"
        return f"{self.verdict} (last answer: {self.answer.describe()})"


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


@asynccontextmanager
async def task_group() -> AsyncIterator[TaskGroup]:
    """An anyio task group that raises its one meaningful error bare, not grouped.

    Our tasks fail for one reason at a time (the container died, the deadline
    passed); callers and users want that error, not an ExceptionGroup.
    """
    try:
        async with anyio.create_task_group() as tg:
            yield tg
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        ours = [e for e in leaves if isinstance(e, RollingUpdateError)]
        errors = [e for e in leaves if isinstance(e, Exception)]
        chosen = (ours or errors or leaves)[0]
        raise chosen from chosen.__cause__


async def poll_until_healthy(
    http: aiohttp.ClientSession,
    url: str,
    rule: HealthConfig,
    *,
    interval: float,
    expect_version: str | None,
    last: LastProbe,
    judge: Callable[[Answer], str | None] | None = None,
) -> Answer:
    """Probe ``url`` every ``interval`` until healthy; the caller bounds it in time.

    Healthy is ``rule`` (with ``expect_version``), or ``judge`` when given.
    Each answer and verdict is kept in ``last``, for the caller to report
    when its deadline passes.
    """
    log = structlog.get_logger()
    verdict_before: str | None = "(none yet)"
    while True:
        if judge is None:
            answer, verdict = await check_health(http, url, rule, expect_version)
        else:
            answer = await probe(http, url, rule)
            verdict = judge(answer)
        last.answer, last.verdict = answer, verdict
        if verdict != verdict_before:
            # Only changes are logged: a 20 ms poll would flood the journal.
            log.info(
                "health.probe", url=url, healthy=verdict is None, reason=redactor.scrub(verdict)
            )
            verdict_before = verdict
        if verdict is None:
            return answer
        await anyio.sleep(interval)


async def await_docker_healthy(ctx: DeployContext, container_id: str, interval: float) -> None:
    """With ``health.docker = "require-healthy"``, wait until Docker's healthcheck says healthy.

    A container without a healthcheck passes at once; the caller bounds the wait.
    """
    if ctx.config.health.docker != "require-healthy":
        return
    while True:  # bounded by the caller's deadline
        info = await ctx.engine.inspect(container_id)
        if info is None or info.health in (None, "healthy"):
            return
        await anyio.sleep(interval)


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
) -> AsyncIterator[Watch]:
    """Run the body while watching a container; abort it the moment the container fails.

    Meanwhile the container's log lines stream into the log (from its start
    when ``replay_logs``, else only new ones), and its engine events, memory
    and the monotonic ``deadline`` are watched. A ``die``/``oom``/``destroy``
    event, memory above ``memory_limit`` bytes, or the deadline passing raises
    ``failure`` with the last log lines, cancelling the body. The events are
    backed by the container's state (inspect, twice a second): a death is
    never missed, not when the event stream ends, nor past the engine's replay.
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
        if event.action in _FATAL_ACTIONS:
            code = f" with code {event.exit_code}" if event.exit_code is not None else ""
            raise await died(f"{'exited' if event.action == 'die' else event.action}{code}")

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

    async def check_state() -> None:
        # Bounded by the watch itself: cancelled when the body ends.
        while True:
            info = await ctx.engine.inspect(container_id)
            if info is None:
                raise await died("was removed")
            if not info.running or info.restart_count > 0:
                how = f"restarted {info.restart_count} time(s)" if info.running else "exited"
                raise await died(f"{how} (last exit code {info.exit_code})")
            if info.health == "unhealthy" and ctx.config.health.docker != "ignore":
                raise fail("is unhealthy by its Docker healthcheck")
            await anyio.sleep(_STATE_CHECK_INTERVAL)

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
        tg.start_soon(check_state)
        if memory_limit is not None:
            await tg.start(ctx.engine.watch_memory, container_id, on_memory)
        if deadline is not None:
            tg.start_soon(expire)
        yield watch
        tg.cancel_scope.cancel()


async def await_healthy(
    ctx: DeployContext,
    *,
    container_id: str,
    container_name: str,
    since_nano: int,
    url: str,
    rule: HealthConfig,
    interval: float,
    expect_version: str | None,
    last: LastProbe,
    failure: type[ContainerFailure],
    memory_limit: int | None = None,
    deadline: float | None = None,
    deadline_reason: str = "",
    on_first_answer: Callable[[], Awaitable[None]] | None = None,
    on_healthy: Callable[[], Awaitable[None]] | None = None,
) -> tuple[Answer, Watch]:
    """Wait until ``url`` is healthy, watching the container (see :func:`watching`).

    ``on_first_answer`` runs as soon as ``url`` answers at all, before it is healthy (the
    Brain is "degraded" for its first ~70 ms: e.g. drained before its first tick);
    ``on_healthy`` once it is healthy, the container still watched.
    """
    async with watching(
        ctx,
        container_id=container_id,
        container_name=container_name,
        since_nano=since_nano,
        failure=failure,
        doing="waiting for health",
        memory_limit=memory_limit,
        deadline=deadline,
        deadline_reason=deadline_reason,
    ) as watch:
        if on_first_answer is not None:
            await poll_until_healthy(
                ctx.http,
                url,
                rule,
                interval=min(interval, _ANSWER_POLL),
                expect_version=None,
                last=last,
                judge=answers_at_all,
            )
            await on_first_answer()
        answer = await poll_until_healthy(
            ctx.http, url, rule, interval=interval, expect_version=expect_version, last=last
        )
        await await_docker_healthy(ctx, container_id, interval)
        if on_healthy is not None:
            await on_healthy()
    return answer, watch


def answers_at_all(answer: Answer) -> str | None:
    """A judge for :func:`poll_until_healthy`: any HTTP answer will do."""
    return answer.error if answer.status is None else None


async def await_serving(
    http: aiohttp.ClientSession,
    url: str,
    health: HealthConfig,
    verify: VerifyConfig,
    *,
    baseline: HealthBaseline | None,
    answering: bool = False,
) -> str | None:
    """The one wait until a service serves again after a change: ``url`` polled every
    ``verify.interval`` for at most ``verify.timeout`` until it answers at all
    (``answering``), as healthily as ``baseline`` (blue as the deploy found it), or
    healthily. ``None`` once it serves, else what it answered last."""
    judge: Callable[[Answer], str | None] | None = None  # poll_until_healthy's own: healthy
    if answering:
        judge = answers_at_all
    elif baseline is not None:
        judge = lambda answer: baseline.judge(answer, health)  # noqa: E731
    last = LastProbe()
    with anyio.move_on_after(verify.timeout):
        await poll_until_healthy(
            http, url, health, interval=verify.interval, expect_version=None, last=last, judge=judge
        )
        return None
    return last.explain()


async def restore_wait(
    ctx: DeployContext,
    service: ServiceConfig,
    health: HealthConfig,
    verify: VerifyConfig,
    *,
    answering: bool = False,
) -> None:
    """Wait until blue, started again, is as healthy as the deploy found it (``answering``:
    until it answers HTTP at all)."""
    baseline = ctx.blue_health
    url = ctx.url(service.port, health.path)
    why = await await_serving(ctx.http, url, health, verify, baseline=baseline, answering=answering)
    if why is None:
        return
    if answering:
        raise RestoreFailed(
            f"blue is back as {service.name} but did not answer within {verify.timeout:g}s: {why}"
        )
    found = f" (before the deploy it answered: {baseline.found})" if baseline else ""
    raise RestoreFailed(
        f"blue is back as {service.name} but not as healthy as it was within "
        f"{verify.timeout:g}s: {why}{found}"
    )
