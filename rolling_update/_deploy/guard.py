"""The last word of a rollback: blue serves, as healthy as the preflight found it."""

from __future__ import annotations

import structlog

from rolling_update._config.settings import HealthConfig, ServiceConfig, VerifyConfig
from rolling_update._deploy.context import DeployContext
from rolling_update._errors import RestoreFailed
from rolling_update._watch.health import restore_wait


class ConfirmBlue:
    """First in every plan, so that its undo runs last: after every other undo, the
    rollback actions included, blue must be the production container, running, and
    answer as healthy as the preflight found it. Otherwise the rollback is incomplete
    (exit 3), whether blue was stopped or not: a rollback action that failed, or a
    drain that stopped blue's tick loop, is not "the previous version serves".
    """

    name = "guard"
    title = "Watching over blue"

    def __init__(self, service: ServiceConfig, health: HealthConfig, verify: VerifyConfig) -> None:
        self.service = service
        self.health = health
        self.verify = verify

    async def run(self, ctx: DeployContext) -> None:
        pass

    async def compensate(self, ctx: DeployContext) -> None:
        serving = ctx.found.blue_serving
        if serving is None:
            return
        blue = await ctx.engine.inspect(self.service.name)
        if blue is not None and blue.id == serving and not blue.running:
            # Found running, stopped by something other than this deploy (an engine
            # restart without live-restore; the undos start only what they stopped):
            # started again. An engine still going down fails the start: the runner asks
            # this undo again while its budget lasts.
            structlog.get_logger().warning("rollback.blue_found_stopped", id=serving[:12])
            await ctx.engine.start(blue.id)
            blue = await ctx.engine.inspect(self.service.name)
        if not ctx.is_blue_serving(blue):
            now = "nothing" if blue is None else f"{blue.id[:12]} (running: {blue.running})"
            raise RestoreFailed(
                f"blue ({serving[:12]}) is not the running {self.service.name}: {now} is"
            )
        await restore_wait(ctx, self.service, self.health, self.verify)
        structlog.get_logger().info("rollback.blue_confirmed", container=self.service.name)
