"""The kernel handoff around the switch: production's port goes to green, then back.

:class:`Redirect` runs after blue's tick boundary: from then on new
connections for production's port reach green, which is healthy. The switch
stops blue and starts the new production container behind that redirect;
``verify`` probes the real production port (the tool's sockets bypass the
redirect), and :class:`Release` then gives the port back to production.

Rollback keeps a serving target behind the port at every point: a release
undone puts the redirect back to green (if green still runs) before blue is
brought back, and the redirect is only removed once production's port
answers again. Without ``ctx.handoff`` (switch.mode = restart, or the
fallback) both steps do nothing.
"""

from __future__ import annotations

import time
from dataclasses import replace

import structlog

from rolling_update.toolkit import (
    DeployContext,
    HealthConfig,
    HelperNotRun,
    Redirected,
    RestoreFailed,
    ServiceConfig,
    measures,
    probe,
)


class Redirect:
    """Send new connections for production's port to green (one atomic nft transaction)."""

    name = "handoff"
    title = "Handing production's port to green"
    gives = (Redirected,)

    def __init__(self, service: ServiceConfig, health: HealthConfig) -> None:
        self.service = service
        self.health = health

    async def run(self, ctx: DeployContext) -> None:
        if not ctx.handoff:
            # switch.mode = restart, the fallback, or a first deploy (nothing to hand over).
            return
        # Recorded first: a kill between the two leaves recover a table to look for.
        ctx.record(redirect=True, shift_share=None)
        try:
            await ctx.port_handoff.to_green()
        except HelperNotRun:
            # The change never ran: the port is as it was (a gradual shift's share aside),
            # and the undo, which would need a helper too, has nothing to give back.
            if ctx.find(Redirected) is None:
                ctx.record(redirect=False)
                ctx.give(Redirected(active=False))
            raise
        ctx.give(Redirected(active=True, began=time.monotonic()))
        structlog.get_logger().info(
            "handoff.redirect", port=self.service.port, to=self.service.green_port
        )

    async def compensate(self, ctx: DeployContext) -> None:
        redirected = ctx.find(Redirected)
        # Given without a beginning only by a run whose nft change never ran (see run).
        if not ctx.handoff or (redirected is not None and redirected.began is None):
            return
        await give_port_back(ctx, self.service, self.health)


async def give_port_back(ctx: DeployContext, service: ServiceConfig, health: HealthConfig) -> None:
    """Remove the redirect (all of it, or a share) in one atomic change, if production's
    port answers without it (one probe, no wait): never while nothing else serves there and
    green still runs (:class:`RestoreFailed`, the redirect kept)."""
    # The switch's undo has brought blue back by now (or never stopped it); check that it
    # answers.
    url = ctx.url(service.port, health.path)
    answer = await probe(ctx.http, url, health)
    green = None if not ctx.green_id else await ctx.engine.inspect(ctx.green_id)
    if answer.status is None and green is not None and green.running:
        raise RestoreFailed(
            f"the redirect of port {service.port} to green is kept: nothing else "
            f"answers there ({answer.describe()})"
        )
    if answer.status is None:
        # Green no longer runs (an engine restart stopped it): the redirect leads
        # nowhere, while blue, coming back, listens on production's port itself.
        structlog.get_logger().warning(
            "handoff.released_to_nothing", port=service.port, why=answer.describe()
        )
    await ctx.port_handoff.release()
    ctx.record(redirect=False, shift_share=None)
    ctx.give(replace(ctx.find(Redirected) or Redirected(active=False), active=False))
    structlog.get_logger().info("handoff.released", port=service.port, to="blue")


class Release:
    """Give production's port back to the verified new container (atomic)."""

    name = "release"
    title = "Handing production's port to the new version"

    def __init__(self, service: ServiceConfig) -> None:
        self.service = service

    async def run(self, ctx: DeployContext) -> None:
        if not ctx.handoff:
            return
        await ctx.port_handoff.release()
        ctx.record(redirect=False)
        redirected = replace(ctx.get(Redirected), active=False, ended=time.monotonic())
        ctx.give(redirected)
        if redirected.began is not None and redirected.ended is not None:
            ctx.measured[measures.HANDOFF] = round(redirected.ended - redirected.began, 3)
        structlog.get_logger().info("handoff.released", port=self.service.port, to="production")

    async def compensate(self, ctx: DeployContext) -> None:
        redirected = ctx.find(Redirected)
        if not ctx.handoff or redirected is None or redirected.ended is None or not ctx.green_id:
            return
        green = await ctx.engine.inspect(ctx.green_id)
        if green is None or not green.running:
            return
        # Behind green again while blue is brought back.
        ctx.record(redirect=True)
        await ctx.port_handoff.to_green()
        ctx.give(replace(redirected, active=True, ended=None))
        structlog.get_logger().info(
            "handoff.redirect", port=self.service.port, to=self.service.green_port
        )
