"""Waiting on a container with its logs, engine events and health probes at once.

One task group per wait: the container's log lines stream into the structured
log, its engine events abort the wait the moment it dies or restarts, and the
health poller ends the wait when an answer is acceptable. The deadline is the
caller's (``anyio.fail_after`` around :func:`await_healthy`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import structlog
from anyio.abc import TaskGroup

from ._config import HealthConfig
from ._context import DeployContext
from ._engine import ContainerEvent
from ._errors import ContainerFailure, RollingUpdateError
from ._http import Answer, judge_health, probe

_FATAL_ACTIONS = {"die", "oom", "destroy"}


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
    ctx: DeployContext,
    url: str,
    rule: HealthConfig,
    *,
    interval: float,
    expect_version: str | None,
    last: LastProbe,
) -> Answer:
    """Probe ``url`` every ``interval`` until healthy; the caller bounds it in time.

    Each answer and verdict is kept in ``last``, for the caller to report
    when its deadline passes.
    """
    log = structlog.get_logger()
    verdict_before: str | None = "(none yet)"
    while True:
        answer = await probe(ctx.http, url, rule)
        verdict = judge_health(answer, rule, expect_version)
        last.answer, last.verdict = answer, verdict
        if verdict != verdict_before:
            # Only changes are logged: a 20 ms poll would flood the journal.
            log.info("health.probe", url=url, healthy=verdict is None, reason=verdict)
            verdict_before = verdict
        if verdict is None:
            return answer
        await anyio.sleep(interval)


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
) -> Answer:
    """Wait until ``url`` is healthy, failing at once if the container dies.

    Streams the container's logs meanwhile. Raises ``failure`` (with the last
    log lines) on a ``die``/``oom``/``destroy`` event.
    """
    log = structlog.get_logger()
    tail: deque[str] = deque(maxlen=30)

    async def on_line(line: str) -> None:
        tail.append(line)
        log.info("container.log", container=container_name, line=line)

    async def on_event(event: ContainerEvent) -> None:
        if event.action in _FATAL_ACTIONS:
            code = f" with code {event.exit_code}" if event.exit_code is not None else ""
            # Let the log stream deliver the dying lines before they are quoted.
            with anyio.move_on_after(0.3):
                await anyio.sleep(0.3)
            raise failure(
                f"{container_name} {'exited' if event.action == 'die' else event.action}{code} "
                f"while waiting for health",
                container=container_name,
                last_logs=list(tail),
            )

    async with task_group() as tg:
        await tg.start(ctx.engine.follow_logs, container_id, on_line)
        await tg.start(ctx.engine.watch_events, container_id, since_nano, on_event)
        answer = await poll_until_healthy(
            ctx, url, rule, interval=interval, expect_version=expect_version, last=last
        )
        tg.cancel_scope.cancel()
    return answer
