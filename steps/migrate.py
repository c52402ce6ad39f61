"""Run database migrations in one-off containers of the new image."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import replace

import anyio
import structlog
from anyio.abc import TaskStatus

from rolling_update.toolkit import (
    BlueChecked,
    ConflictError,
    ContainerSpec,
    DeployContext,
    MigrateConfig,
    MigrationFailed,
    ServiceConfig,
    clear_name,
    disk_full_said,
    ended_as_found,
    redactor,
    remove_ours,
    task_group,
)


class RunMigrations:
    """Run each migration command; a non-zero exit stops the deploy, blue untouched.

    Migrations cannot be undone by the tool: the compensation only removes the
    one-off container. Write migrations that the old version tolerates. Then
    ``migrate.blue_check`` runs with blue's image: whether blue could boot again
    on the schema they left, which decides what a rollback after the switch can
    do (``ctx.blue_bootable``). A running blue is not affected either way.
    """

    name = "migrate"
    title = "Running migrations"

    def __init__(self, cfg: MigrateConfig, service: ServiceConfig) -> None:
        self.cfg = cfg
        self.service = service

    @property
    def container_name(self) -> str:
        return self.service.migrate_name

    def spec(
        self, ctx: DeployContext, command: list[str], *, image: str | None = None
    ) -> ContainerSpec:
        spec = ctx.spec("migrate", self.container_name, None, command=command)
        return spec if image is None else replace(spec, image=image)

    async def run(self, ctx: DeployContext) -> None:
        log = structlog.get_logger()
        if not self.cfg.commands:
            log.info("migrate.skipped", reason="no migration commands configured")
            return
        await clear_name(ctx.engine, self.container_name, self.service.name, ConflictError)
        for command in self.cfg.commands:
            log.info("migrate.command", command=command)
            await self._one_off(ctx, command)
        blue_raw = ctx.found.blue_raw
        blue_image = None if blue_raw is None else blue_raw.get("Image")
        if self.cfg.blue_check and blue_image:
            await self._check_blue(ctx, str(blue_image))

    async def _one_off(
        self, ctx: DeployContext, command: list[str], image: str | None = None
    ) -> None:
        container_id = await ctx.engine.create(self.spec(ctx, command, image=image))
        try:
            await self._run_one(ctx, container_id, command)
        finally:
            with anyio.move_on_after(ctx.config.rollback.step_timeout, shield=True):
                await self._stop(ctx, container_id, command)
                await ctx.engine.remove(container_id)

    async def _check_blue(self, ctx: DeployContext, image: str) -> None:
        log = structlog.get_logger()
        check = self.cfg.blue_check
        try:
            await self._one_off(ctx, check, image)
        except MigrationFailed as exc:
            bootable = False
            log.warning(
                "migrate.blue_check",
                command=check,
                passed=False,
                why=str(exc),
                rollback_after_switch="blue cannot be restarted on the migrated schema: a "
                "failure after the switch ends with exit 3, the new version left as it is",
            )
        else:
            bootable = True
            log.info(
                "migrate.blue_check",
                command=check,
                passed=True,
                rollback_after_switch="restarts blue",
            )
        ctx.give(BlueChecked(bootable=bootable))
        ctx.measured["blue_bootable"] = bootable
        ctx.record(blue_bootable=bootable)

    async def _stop(self, ctx: DeployContext, container_id: str, command: list[str]) -> None:
        # A migration cut short (interrupt, deadline) gets SIGTERM and its grace
        # period, as `docker stop` gives it, to roll its transaction back; the
        # removal alone would SIGKILL it mid-statement.
        info = await ctx.engine.inspect(container_id)
        if info is None or not info.running:
            return
        structlog.get_logger().warning(
            "migrate.interrupted",
            command=command,
            grace=self.cfg.stop_timeout,
            action="SIGTERM, then SIGKILL after the grace period",
        )
        await ctx.engine.stop(container_id, grace=self.cfg.stop_timeout)

    async def _run_one(self, ctx: DeployContext, container_id: str, command: list[str]) -> None:
        log = structlog.get_logger()
        tail: deque[str] = deque(maxlen=30)

        began = time.monotonic()

        async def on_line(line: str) -> None:
            line = redactor.scrub(line)
            tail.append(line)
            elapsed = round(time.monotonic() - began, 1)
            log.info("container.log", container=self.container_name, line=line, elapsed=elapsed)

        logs_done = anyio.Event()

        async def follow(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                await ctx.engine.follow_logs(container_id, on_line, task_status=task_status)
            finally:
                logs_done.set()

        await ctx.engine.start(container_id)
        try:
            with anyio.fail_after(self.cfg.timeout):
                async with task_group() as tg:
                    await tg.start(follow)
                    code = await ctx.engine.wait(container_id)
                    # The follow ends by itself once the container has exited;
                    # waiting for it keeps the last lines in the error message.
                    with anyio.move_on_after(5):
                        await logs_done.wait()
                    tg.cancel_scope.cancel()
        except TimeoutError:
            raise MigrationFailed(
                f"migration {' '.join(command)!r} ran past {self.cfg.timeout:g}s",
                container=self.container_name,
                last_logs=list(tail),
            ) from None
        if code != 0:
            # Told as every death is: the engine knows whether the kernel killed it.
            info = await ctx.engine.inspect(container_id)
            how = f"exited with code {code}" if info is None else ended_as_found(info, 0)
            raise MigrationFailed(
                f"migration {' '.join(command)!r} {how}{disk_full_said(tail)}",
                container=self.container_name,
                last_logs=list(tail),
            )

    async def compensate(self, ctx: DeployContext) -> None:
        await remove_ours(ctx.engine, self.container_name, ctx.deploy_id)
