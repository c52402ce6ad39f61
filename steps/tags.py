"""Extra tags (``image.tags``, e.g. ``latest``) for the new image, moved back on a rollback."""

from __future__ import annotations

import structlog

from rolling_update.toolkit import DeployContext, ImageConfig, split_reference


class TagImage:
    """Point each of ``image.tags`` at the new image, right before the switch.

    Before, not after: compose's ``image: repo:${VERSION:-latest}`` names the image
    by such a tag, and the new production container's compose labels are computed
    with it. Undone by pointing each tag back at the image it named before (or
    removing it where it named none), so that a rollback leaves ``latest`` on what
    serves.
    """

    name = "tag"
    title = "Tagging the new image"

    def __init__(self, image: ImageConfig) -> None:
        self.image = image
        self.before: dict[str, str | None] = {}

    def targets(self, ctx: DeployContext) -> list[str]:
        repo, _ = split_reference(ctx.image)
        return [f"{repo}:{tag}" for tag in self.image.tags if f"{repo}:{tag}" != ctx.image]

    async def run(self, ctx: DeployContext) -> None:
        log = structlog.get_logger()
        for target in self.targets(ctx):
            if target not in self.before:
                self.before[target] = await ctx.engine.image_id(target)
            await ctx.engine.tag_image(ctx.image, target)
            log.info("image.tagged", image=ctx.image, tag=target)

    async def compensate(self, ctx: DeployContext) -> None:
        log = structlog.get_logger()
        for target, previous in self.before.items():
            if previous is None:
                await ctx.engine.remove_image(target)
                log.info("image.untagged", tag=target)
            else:
                await ctx.engine.tag_image(previous, target)
                log.info("image.tagged", image=previous[:19], tag=target, why="rolled back")
