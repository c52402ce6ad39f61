"""Health polls: until healthy (by body, version, Docker's healthcheck), until it serves
again as healthily as it was found, or until it answers at all. The caller bounds each
wait (``anyio.fail_after``), except :func:`await_serving`, bounded by ``verify.timeout``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import anyio
import structlog

from rolling_update._config.settings import HealthConfig, ServiceConfig, VerifyConfig
from rolling_update._deploy.context import DeployContext
from rolling_update._errors import ContainerFailure, RestoreFailed
from rolling_update._observe.logs import redactor
from rolling_update._watch.probe import (
    Answer,
    HealthBaseline,
    check_health,
    probe,
)
from rolling_update._watch.watch import Watch, watching

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
    beside: str | None = None,
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
        beside=beside,
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
    baseline = ctx.found.blue_health
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
