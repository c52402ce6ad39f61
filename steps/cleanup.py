"""Remove green and the old blue once production is verified."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import structlog

from rolling_update.toolkit import (
    LABEL_SERVICE,
    DeployContext,
    GreenStarted,
    ProductionDown,
    Redirected,
    RollingUpdateError,
    ServiceConfig,
    Switched,
    again_while_away,
    ended_as_found,
)

from .green import drain_green


class RemoveOld:
    """Stop and remove green and the old blue.

    Runs after the point of no return, so a failure here is a warning naming
    the leftover, never a rollback of a verified deploy; but a new production container
    found dead with nothing to restart it keeps blue and ends the deploy with exit 3.
    """

    name = "cleanup"
    title = "Removing the old containers"

    def __init__(self, service: ServiceConfig) -> None:
        self.service = service

    async def run(self, ctx: DeployContext) -> None:
        # Shielded: an interrupt now (the deploy is verified) waits the few
        # hundred milliseconds this takes rather than leave leftovers.
        budget = ctx.config.rollback.step_timeout
        with anyio.move_on_after(budget, shield=True):
            await self._remove(ctx, ends=anyio.current_time() + budget)

    async def _remove(self, ctx: DeployContext, *, ends: float) -> None:
        redirected = ctx.find(Redirected)
        green = ctx.find(GreenStarted)
        took_traffic = redirected is not None and redirected.began is not None
        if redirected is not None and redirected.ended is not None and green is not None:
            # Green keeps serving the connections it took during the handoff, until they
            # close (at most switch.drain after the handoff ended).
            ended = redirected.ended

            async def drain() -> None:
                left = ctx.config.switch.drain - (time.monotonic() - ended)
                await drain_green(ctx, green.id, self.service.green_port, left)

            await self._again(ctx, drain, ends=ends)
        await self._remove_containers(ctx, took_traffic=took_traffic, ends=ends)
        await self._production_runs(ctx, ctx.find(Switched) or Switched())
        if ctx.config.build.enabled and ctx.config.build.keep:
            await self._prune_images(ctx)

    async def _prune_images(self, ctx: DeployContext) -> None:
        """Keep the newest ``build.keep`` images the tool built for this service."""
        log = structlog.get_logger()
        keep = ctx.config.build.keep
        serving = await ctx.engine.image_id(ctx.image)
        # The version production ran before: what `rollback` goes back to.
        previous = None if ctx.found.blue_raw is None else ctx.found.blue_raw.get("Image")
        try:
            images = await ctx.engine.list_images({LABEL_SERVICE: self.service.name})
        except RollingUpdateError as exc:
            log.warning("cleanup.images_not_listed", error=str(exc))
            return
        for image in images[keep:]:
            if image.id in (serving, previous):
                continue
            for ref in image.tags or [image.id]:
                try:
                    await ctx.engine.remove_image(ref)
                except RollingUpdateError as exc:
                    # In use by a container (a rollback target someone kept): leave it.
                    log.warning("cleanup.image_kept", image=ref, error=str(exc))
                else:
                    log.info("cleanup.image_removed", image=ref)

    async def _remove_containers(
        self, ctx: DeployContext, *, took_traffic: bool, ends: float
    ) -> None:
        log = structlog.get_logger()
        switched = ctx.find(Switched) or Switched()
        for label, container_id in (("green", ctx.green_id), ("old", switched.blue_id)):
            if container_id is None:
                continue
            if label == "old":
                # The previous version is the one container left that could serve.
                await self._production_runs(ctx, switched)
            forget = label == "green" and took_traffic
            try:
                await self._again(
                    ctx, partial(self._remove_one, ctx, container_id, forget=forget), ends=ends
                )
            except RollingUpdateError as exc:
                log.warning(
                    "cleanup.leftover", container=label, id=container_id[:12], error=str(exc)
                )
            else:
                log.info("cleanup.removed", container=label, id=container_id[:12])

    async def _production_runs(self, ctx: DeployContext, switched: Switched) -> None:
        """Raise :class:`ProductionDown` if the new production container stopped and its
        restart policy will not bring it back: past the commit nothing watches it but this,
        and the deploy must not end saying it serves. One that ``always`` or
        ``unless-stopped`` restarts (an engine restarting stops it for a while) is let be,
        as the deploy always let it; an engine that cannot say is left to the removals' own
        handling."""
        if switched.production_id is None:
            return
        try:
            info = await ctx.engine.inspect(switched.production_id)
            if info is not None and (info.running or info.restart in ("always", "unless-stopped")):
                return
            blue = None if switched.blue_id is None else await ctx.engine.inspect(switched.blue_id)
        except RollingUpdateError:
            return
        how = "is gone" if info is None else ended_as_found(info, 0)
        kept = "" if blue is None else f"; the previous version is kept as {blue.name}"
        raise ProductionDown(
            f"{self.service.name}, the new version, {how} during the cleanup and nothing "
            f"restarted it: production's port is dark{kept}"
        )

    async def _again(
        self, ctx: DeployContext, call: Callable[[], Awaitable[None]], *, ends: float
    ) -> None:
        """``call`` tried again while the engine is away (a restart, a hang) until another
        try would pass ``ends``, the end of the cleanup's budget; then its error is raised,
        so what is left is said, and `recover` finishes it (exit 4)."""
        await again_while_away(
            call, event="cleanup.again", ends=ends, reserve=ctx.config.engine.call_timeout
        )

    async def _remove_one(self, ctx: DeployContext, container_id: str, *, forget: bool) -> None:
        await ctx.engine.stop(container_id, grace=self.service.stop_timeout)
        if forget:
            # Green's exit reset the connections it still held; their entries send a new
            # connection from the same source port to green's closed port, from now on:
            # forgotten first.
            await ctx.port_handoff.forget(self.service.green_port)
        await ctx.engine.remove(container_id)

    async def compensate(self, ctx: DeployContext) -> None:
        pass
