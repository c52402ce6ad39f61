"""Start green beside blue, and wait until it is healthy."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import structlog

from rolling_update.toolkit import (
    ConflictError,
    ContainerSpec,
    DeployContext,
    GreenConfig,
    GreenFailed,
    GreenStarted,
    HealthCheckFailed,
    HealthConfig,
    LastProbe,
    Redirected,
    RestoreFailed,
    ServiceConfig,
    Watch,
    await_healthy,
    clear_name,
    drained,
    port_in_use,
    redactor,
    remove_ours,
    run_actions,
    waiting,
    watching,
)


class StartGreen:
    """Create and start green on its own port, with green-only env overrides."""

    name = "start-green"
    title = "Starting green container"
    gives = (GreenStarted,)

    def __init__(self, service: ServiceConfig, green: GreenConfig) -> None:
        self.service = service
        self.green = green

    def spec(self, ctx: DeployContext) -> ContainerSpec:
        return ctx.spec(
            "green", self.service.green_name, self.service.green_port, overrides=self.green.env
        )

    async def run(self, ctx: DeployContext) -> None:
        # The preflight checked both before anything changed; they are checked
        # again because the build and migrations leave time for them to change.
        await clear_name(ctx.engine, self.service.green_name, self.service.name, ConflictError)
        if await port_in_use(self.service.host, self.service.green_port):
            raise ConflictError(
                f"port {self.service.green_port} (service.green_port) was taken after the "
                "preflight found it free; green could not bind it"
            )
        green_id = await ctx.engine.create(self.spec(ctx))
        await ctx.engine.start(green_id)
        started = time.monotonic()
        info = await ctx.engine.inspect(green_id)
        # A second early: the engine's clock and ours may disagree.
        since_nano = 0 if info is None else int((info.created - 1) * 1e9)
        ctx.give(GreenStarted(id=green_id, started=started, since_nano=since_nano))
        structlog.get_logger().info(
            "green.started",
            container=self.service.green_name,
            id=green_id[:12],
            port=self.service.green_port,
        )

    async def compensate(self, ctx: DeployContext) -> None:
        if ctx.handoff_active:
            # The redirect could not be removed (nothing else answers on production's
            # port): green is what serves there, and removing it would darken the port.
            raise RestoreFailed(
                f"{self.service.green_name} is kept: production's port {self.service.port} "
                f"is still redirected to it (port {self.service.green_port})"
            )
        redirected, green = ctx.find(Redirected), ctx.find(GreenStarted)
        took_traffic = redirected is not None and redirected.began is not None
        if took_traffic and green is not None:
            # As in a deploy's cleanup, at most switch.drain.
            await drain_green(ctx, green.id, self.service.green_port, ctx.config.switch.drain)
        # Gracefully: during a handoff green serves real traffic until the last moment.
        await remove_ours(
            ctx.engine, self.service.green_name, ctx.deploy_id, grace=self.service.stop_timeout
        )
        if took_traffic:
            # The connections green's exit reset would send new ones to its closed port.
            await ctx.port_handoff.forget(self.service.green_port)


def watching_green(
    ctx: DeployContext,
    green: GreenStarted,
    doing: str,
    *,
    memory_mb: float | None = None,
    with_blue: bool = True,
) -> AbstractAsyncContextManager[Watch]:
    """Green watched while a later step waits (new log lines only): its death, restart or
    OOM kill, its memory bar (``memory_mb``, else ``limits.green_memory_mb``), the
    two-container deadline and, ``with_blue``, blue's death end the wait with
    :class:`GreenFailed`."""
    args = ctx.green_watch_args()
    if memory_mb is not None:
        args["memory_limit"] = int(memory_mb * 2**20)
    if not with_blue:
        args["beside"] = None
    return watching(
        ctx,
        container_id=green.id,
        container_name=ctx.config.service.green_name,
        since_nano=green.since_nano,
        failure=GreenFailed,
        doing=doing,
        replay_logs=False,
        **args,
    )


@asynccontextmanager
async def green_serving(ctx: DeployContext, doing: str) -> AsyncIterator[None]:
    """While production's port is redirected to green, green watched as in the tick wait,
    blue not (the switch stops it): green dead leaves the port dark, so the step ends, and
    the deploy rolls back, the moment it is seen rather than when a probe of production
    fails or nothing does. Without the redirect nothing is watched."""
    green = ctx.find(GreenStarted)
    if green is None or not ctx.handoff_active:
        yield
        return
    async with watching_green(ctx, green, doing, with_blue=False) as watch:
        try:
            yield
        finally:
            ctx.note_green_memory(watch.memory_peak)


async def drain_green(ctx: DeployContext, green_id: str, port: int, limit: float) -> None:
    """Green took connections through the redirect: they finish, and close, before green's
    SIGTERM (at most ``limit`` s); how long that took, and how many there were and were left,
    is logged."""
    waited = await drained(ctx.engine, green_id, port, firewall=ctx.firewall, limit=limit)
    structlog.get_logger().info("handoff.green_drained", **waited._asdict())


class AwaitGreenHealthy:
    """Poll green's health while streaming its logs; abort at once if it dies."""

    name = "green-health"
    title = "Waiting for green to be healthy"
    needs = (GreenStarted,)

    def __init__(self, service: ServiceConfig, health: HealthConfig) -> None:
        self.service = service
        self.health = health

    async def run(self, ctx: DeployContext) -> None:
        green = ctx.get(GreenStarted)
        url = ctx.url(self.service.green_port, self.health.path)
        last = LastProbe()
        deadline = self.health.interval * self.health.attempts

        async def answers() -> None:
            await run_actions(ctx, "green-answers")

        async def healthy() -> None:
            await run_actions(ctx, "green-healthy")

        try:
            with anyio.fail_after(deadline), waiting("green to be healthy", deadline):
                answer, watch = await await_healthy(
                    ctx,
                    container_id=green.id,
                    container_name=self.service.green_name,
                    since_nano=green.since_nano,
                    url=url,
                    rule=self.health,
                    interval=self.health.interval,
                    expect_version=ctx.version,
                    last=last,
                    failure=GreenFailed,
                    on_first_answer=answers if ctx.config.actions_at("green-answers") else None,
                    on_healthy=healthy,
                    **ctx.green_watch_args(),
                )
        except TimeoutError:
            raise HealthCheckFailed(
                f"green not healthy within {deadline:g}s",
                url=url,
                why=last.explain(),
            ) from None
        ctx.note_green_memory(watch.memory_peak)
        structlog.get_logger().info("green.healthy", health=redactor.scrub(answer.body))

    async def compensate(self, ctx: DeployContext) -> None:
        pass
