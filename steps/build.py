"""Build the new image, streaming the build output into the log."""

from __future__ import annotations

import os
import subprocess

import anyio
import structlog

from rolling_update._config import BuildConfig
from rolling_update._context import DeployContext
from rolling_update._errors import BuildFailed
from rolling_update._logging import redactor


class BuildImage:
    """Build ``ctx.image`` from a Docker context, or with an external command.

    The compensation keeps the image: it changes nothing that serves, and an
    operator finding out why the new version failed wants to run it.
    """

    name = "build"
    title = "Building new image"

    def __init__(self, cfg: BuildConfig) -> None:
        self.cfg = cfg

    async def run(self, ctx: DeployContext) -> None:
        log = structlog.get_logger()
        log.info("build.image", image=ctx.image)
        try:
            with anyio.fail_after(self.cfg.timeout):
                if self.cfg.command is not None:
                    await self._run_command(ctx)
                else:
                    assert self.cfg.context is not None  # the config validator ensures one way
                    await ctx.engine.build_image(
                        self.cfg.context,
                        dockerfile=self.cfg.dockerfile,
                        tag=ctx.image,
                        args=self.cfg.args,
                        on_line=lambda line: log.info("build.log", line=redactor.scrub(line)),
                    )
        except TimeoutError:
            raise BuildFailed(f"build of {ctx.image} ran past {self.cfg.timeout:g}s") from None
        if not await ctx.engine.image_exists(ctx.image):
            raise BuildFailed(f"the build finished but image {ctx.image} does not exist")

    async def _run_command(self, ctx: DeployContext) -> None:
        assert self.cfg.command is not None
        log = structlog.get_logger()
        argv = [part.replace("{image}", ctx.image) for part in self.cfg.command]
        env = {**os.environ, "IMAGE": ctx.image, "VERSION": ctx.version}
        try:
            process = await anyio.open_process(
                argv, env=env, cwd=self.cfg.workdir, stderr=subprocess.STDOUT
            )
        except OSError as exc:
            raise BuildFailed(f"cannot run build command {argv[0]!r}: {exc.strerror}") from None
        async with process:
            assert process.stdout is not None
            buffered = b""
            async for chunk in process.stdout:
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for line in lines:
                    text = line.decode(errors="replace").rstrip()
                    log.info("build.log", line=redactor.scrub(text))
            if buffered:
                text = buffered.decode(errors="replace").rstrip()
                log.info("build.log", line=redactor.scrub(text))
            code = await process.wait()
        if code != 0:
            raise BuildFailed(f"build command {argv[0]!r} exited with code {code}")

    async def compensate(self, ctx: DeployContext) -> None:
        structlog.get_logger().info("build.image.kept", image=ctx.image)
