"""Remove green and the old blue once production is verified."""

from __future__ import annotations

import anyio
import structlog

from rolling_update._config import ServiceConfig
from rolling_update._context import DeployContext
from rolling_update._errors import RollingUpdateError


class RemoveOld:
    """Stop and remove green and the old blue.

    Runs after the point of no return, so a failure here is a warning naming
    the leftover, never a rollback of a verified deploy.
    """

    name = "cleanup"
    title = "Removing the old containers"

    def __init__(self, service: ServiceConfig) -> None:
        self.service = service

    async def run(self, ctx: DeployContext) -> None:
        # Shielded: an interrupt now (the deploy is verified) waits the few
        # hundred milliseconds this takes rather than leave leftovers.
        with anyio.move_on_after(ctx.config.rollback.step_timeout, shield=True):
            await self._remove(ctx)

    async def _remove(self, ctx: DeployContext) -> None:
        log = structlog.get_logger()
        for label, container_id in (("green", ctx.green_id), ("old", ctx.blue_id)):
            if container_id is None:
                continue
            try:
                await ctx.engine.stop(container_id, grace=self.service.stop_timeout)
                await ctx.engine.remove(container_id)
            except RollingUpdateError as exc:
                log.warning(
                    "cleanup.leftover", container=label, id=container_id[:12], error=str(exc)
                )
            else:
                log.info("cleanup.removed", container=label, id=container_id[:12])

    async def compensate(self, ctx: DeployContext) -> None:
        pass
