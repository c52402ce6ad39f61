"""Lifecycle actions at a moment of their own in the plan."""

from __future__ import annotations

import structlog

from rolling_update.toolkit import DeployContext, Moment, run_actions


class RunActions:
    """Run the ``[[actions]]`` of ``moment``; undone by the ``rollback`` actions.

    The plan has one before the switch (blue is drained there: its undo
    cancels the drain) and one after the soak.
    """

    def __init__(self, moment: Moment, *, undo: Moment | None = None) -> None:
        self.moment = moment
        self.undo = undo
        self.name: str = moment
        self.title = f"Running the {moment} actions"

    async def run(self, ctx: DeployContext) -> None:
        await run_actions(ctx, self.moment)

    async def compensate(self, ctx: DeployContext) -> None:
        if self.undo is None:
            return
        if ctx.found.blue_serving is not None:
            production = await ctx.engine.inspect(ctx.config.service.name)
            if not ctx.is_blue_serving(production):
                # Blue was not brought back (it could not boot): nothing answers its calls.
                structlog.get_logger().warning(
                    "actions.skipped",
                    moment=self.undo,
                    why="blue is not the running production container",
                )
                return
        await run_actions(ctx, self.undo)
