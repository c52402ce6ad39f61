"""Build the new image, streaming the build output into the log.

Three ways, logged as ``build.builder``: the engine's BuildKit through the
docker CLI (what ``docker build`` does; needed for ``RUN --mount``, heredocs
and ``# syntax=``), the engine API's classic builder (no CLI needed; the
context is packed as the CLI packs it), or an external ``build.command``.
``builder = "auto"`` takes BuildKit when the CLI can drive it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

import anyio
import structlog

from rolling_update.toolkit import (
    LABEL_SERVICE,
    BuildConfig,
    BuildFailed,
    BuildOptions,
    DeployContext,
    choose_builder,
    disk_full_said,
    redactor,
    run_logged,
)

# The build's last output lines searched for the cause of its failure.
_TAIL = 30


class BuildImage:
    """Build ``ctx.image`` from a Docker context, or with an external command.

    The compensation keeps the image: it changes nothing that serves, and an
    operator finding out why the new version failed wants to run it.
    """

    name = "build"
    title = "Building new image"

    def __init__(self, cfg: BuildConfig) -> None:
        self.cfg = cfg

    def _labels(self, ctx: DeployContext) -> dict[str, str]:
        # Names the images the tool built, for build.keep to prune.
        return {LABEL_SERVICE: ctx.config.service.name}

    def _cli_argv(self, cli: str, ctx: DeployContext) -> list[str]:
        assert self.cfg.context is not None
        argv = [cli, "build", "--progress", "plain", "--tag", ctx.image]
        argv += ["--file", str(self.cfg.context / self.cfg.dockerfile)]
        for key, value in {**self.cfg.args}.items():
            argv += ["--build-arg", f"{key}={value}"]
        for key, value in self._labels(ctx).items():
            argv += ["--label", f"{key}={value}"]
        if self.cfg.target:
            argv += ["--target", self.cfg.target]
        if self.cfg.pull:
            argv.append("--pull")
        if self.cfg.no_cache:
            argv.append("--no-cache")
        return [*argv, str(self.cfg.context)]

    async def run(self, ctx: DeployContext) -> None:
        log = structlog.get_logger()
        log.info("build.image", image=ctx.image)
        tail: deque[str] = deque(maxlen=_TAIL)
        try:
            with anyio.fail_after(self.cfg.timeout):
                await self._build(ctx, tail.append)
        except TimeoutError:
            raise BuildFailed(f"build of {ctx.image} ran past {self.cfg.timeout:g}s") from None
        except BuildFailed as exc:
            said = disk_full_said(tail)
            if not said or disk_full_said([str(exc)]):
                raise
            raise BuildFailed(f"{exc}{said}") from exc
        if not await ctx.engine.image_exists(ctx.image):
            raise BuildFailed(f"the build finished but image {ctx.image} does not exist")

    async def _build(self, ctx: DeployContext, on_line: Callable[[str], None]) -> None:
        """Build by the configured way, each output line logged and handed to ``on_line``."""
        log = structlog.get_logger()
        began = time.monotonic()
        if self.cfg.command is not None:
            argv = [part.replace("{image}", ctx.image) for part in self.cfg.command]
            await self._run_command(ctx, argv, {}, self.cfg.workdir, on_line)
            return
        builder, why = await choose_builder(self.cfg)
        log.info("build.builder", builder=builder, why=why)
        if builder == "buildkit":
            cli = shutil.which(self.cfg.docker_cli) or self.cfg.docker_cli
            argv = self._cli_argv(cli, ctx)
            await self._run_command(ctx, argv, {"DOCKER_BUILDKIT": "1"}, None, on_line)
            return

        def logged(line: str) -> None:
            line = redactor.scrub(line)
            log.info("build.log", line=line, elapsed=round(time.monotonic() - began, 1))
            on_line(line)

        assert self.cfg.context is not None  # the config validator ensures one way
        await ctx.engine.build_image(
            self.cfg.context,
            dockerfile=self.cfg.dockerfile,
            tag=ctx.image,
            args=self.cfg.args,
            on_line=logged,
            options=BuildOptions(
                target=self.cfg.target,
                pull=self.cfg.pull,
                no_cache=self.cfg.no_cache,
                labels=self._labels(ctx),
            ),
        )

    async def _run_command(
        self,
        ctx: DeployContext,
        argv: list[str],
        extra_env: Mapping[str, str],
        cwd: Path | None,
        on_line: Callable[[str], None],
    ) -> None:
        env = {**os.environ, "IMAGE": ctx.image, "VERSION": ctx.version, **extra_env}
        try:
            code = await run_logged(argv, env=env, cwd=cwd, event="build.log", on_line=on_line)
        except OSError as exc:
            raise BuildFailed(f"cannot run build command {argv[0]!r}: {exc.strerror}") from None
        if code != 0:
            raise BuildFailed(f"build command {argv[0]!r} exited with code {code}")

    async def compensate(self, ctx: DeployContext) -> None:
        structlog.get_logger().info("build.image.kept", image=ctx.image)
