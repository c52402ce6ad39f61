"""Lifecycle actions at a moment of their own in the plan."""

from __future__ import annotations

from rolling_update._actions import run_actions
from rolling_update._config import Moment
from rolling_update._context import DeployContext


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
        if self.undo is not None:
            await run_actions(ctx, self.undo)
