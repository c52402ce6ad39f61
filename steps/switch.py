"""Move production from blue to the new image, and verify it serves."""

from __future__ import annotations

import os
import time
from dataclasses import replace

import anyio
import structlog

from rolling_update.toolkit import (
    CONFIG_HASH,
    BlueChecked,
    BlueLastServed,
    ConflictError,
    ContainerInfo,
    ContainerSpec,
    DeployContext,
    GreenStarted,
    HealthConfig,
    LastProbe,
    ProductionFailed,
    RestoreFailed,
    ServiceConfig,
    Switched,
    TickConfig,
    TickWaitFailed,
    VerificationFailed,
    Verified,
    VerifyConfig,
    ask_to_stop_accepting,
    await_healthy,
    clear_name,
    config_hash,
    diff,
    drained,
    judge_health,
    made_by_compose,
    measures,
    probe,
    remove_ours,
    rename_blue,
    restore_wait,
    run_actions,
    waiting,
    watching,
)

from .green import green_serving
from .tick import wait_for_tick_boundary


class Switch:
    """Stop blue at a tick boundary and start the new production container.

    The slow work happens while blue still serves: blue is renamed out of the
    way (a rename does not touch the running process) and the production
    container is created under the production name. Only the stop of blue and
    the start of the prepared container remain inside the window.
    """

    name = "switch"
    title = "Switching production to the new version"
    gives = (Switched,)

    def __init__(
        self, service: ServiceConfig, tick: TickConfig, health: HealthConfig, verify: VerifyConfig
    ) -> None:
        self.service = service
        self.tick = tick
        self.health = health
        self.verify = verify

    def spec(self, ctx: DeployContext) -> ContainerSpec:
        return ctx.spec("production", self.service.name, self.service.port)

    async def run(self, ctx: DeployContext) -> None:
        async with green_serving(ctx, "serving production's port in the switch"):
            await self._switch(ctx)

    async def _switch(self, ctx: DeployContext) -> None:
        log = structlog.get_logger()
        blue = await ctx.engine.inspect(self.service.name)
        if blue is not None:
            await clear_name(ctx.engine, ctx.old_name, self.service.name, ConflictError)
            ctx.give(Switched(blue_id=blue.id, blue_was_running=blue.running))
            ctx.record(blue_id=blue.id, blue_was_running=blue.running)
            await ctx.engine.rename(blue.id, ctx.old_name)
        spec = await self._compose_labelled(ctx, self.spec(ctx))
        if ctx.found.blue_raw is not None:
            log.info(
                "twin.diff",
                against=self.service.name,
                changes=diff(ctx.found.blue_raw, spec.to_api(), ctx.found.twin),
            )
        switched = ctx.find(Switched) or Switched()
        production_id = await ctx.engine.create(spec)
        switched = replace(switched, production_id=production_id)
        ctx.give(switched)
        if blue is not None and blue.running:
            if ctx.handoff_active:
                await self._drain(ctx, blue.id)
                switched = ctx.get(Switched)
            if self.tick.enabled:
                # Checked again right before SIGTERM: a tick may have begun
                # since the tick step returned.
                url = ctx.url(self.service.port, self.tick.path)
                limit, bound = ctx.wait_limit(self.tick.timeout)
                try:
                    with anyio.fail_after(limit):
                        await wait_for_tick_boundary(ctx, url, self.tick, self.health, settle=0)
                except TimeoutError:
                    raise TickWaitFailed(
                        f"blue's tick did not reach a safe boundary within {bound} (tick.timeout)"
                    ) from None
            switched = replace(switched, began=time.monotonic())
            ctx.give(switched)
            log.info("switch.stop_blue", container=self.service.name, id=blue.id[:12])
            await ctx.engine.stop(blue.id, grace=self.service.stop_timeout)
            assert switched.began is not None
            ctx.measured[measures.BLUE_STOP] = round(time.monotonic() - switched.began, 3)
            green = ctx.find(GreenStarted)
            if green is not None:
                ctx.measured[measures.TWO_CONTAINERS] = round(time.monotonic() - green.started, 3)
            if ctx.handoff_active:
                # A connection blue's exit reset is untranslated in conntrack: a new one from
                # its source port would skip the redirect, to blue's closed port.
                await ctx.port_handoff.forget(self.service.port)
        else:
            ctx.give(replace(switched, began=time.monotonic()))
        await ctx.engine.start(production_id)
        log.info("switch.started", container=self.service.name, id=production_id[:12])

    async def _drain(self, ctx: DeployContext, blue_id: str) -> None:
        """Until blue holds no connection on production's port (new ones reach green): requests
        in flight finish and idle keep-alive connections are closed by blue itself, not cut by
        its SIGTERM; first, if configured, blue is asked to close them (``switch.drain_signal``,
        ``drain_request``). Bounded, the ask included, by ``switch.drain_timeout`` and the
        two-container budget."""
        log = structlog.get_logger()
        cfg = ctx.config.switch
        own = cfg.drain_timeout
        if own <= 0:
            log.info("switch.blue_connections", counted=False, why="switch.drain_timeout = 0")
            return
        limit, bound = ctx.wait_limit(own)
        twin = ctx.found.twin
        # Counted inside blue's network namespace: on a bridge, the port it publishes from.
        port = self.service.port if twin is None else twin.container_port(self.service.port)
        began = time.monotonic()
        with waiting("blue's connections to close", limit):
            if cfg.drain_signal is not None or cfg.drain_request is not None:
                # Before the ask: cut short anywhere in it, the undo (or recover) still
                # restarts blue.
                ctx.record(blue_told_to_drain=True)
                ctx.give(replace(ctx.get(Switched), told_to_drain=True))
                with anyio.move_on_after(limit) as asked:
                    await ask_to_stop_accepting(ctx, blue_id)
                if asked.cancelled_caught:
                    log.warning("switch.drain_ask_unanswered", bound=bound)
            _, left, at_start = await drained(
                ctx.engine, blue_id, port, firewall=ctx.firewall,
                limit=limit - (time.monotonic() - began),
            )  # fmt: skip
        seconds = round(time.monotonic() - began, 3)
        ctx.measured[measures.BLUE_DRAIN] = seconds
        if left is not None:
            ctx.measured[measures.BLUE_CONNECTIONS_LEFT] = left
        if left:
            log.warning(
                "switch.blue_drained", seconds=seconds, at_start=at_start, left=left, bound=bound,
                consequence="these connections end with blue's SIGTERM",
            )  # fmt: skip
        else:
            log.info("switch.blue_drained", seconds=seconds, at_start=at_start, left=left)

    async def _compose_labelled(self, ctx: DeployContext, spec: ContainerSpec) -> ContainerSpec:
        """``spec`` with the config hash compose now computes, for a blue compose made."""
        labels = dict(spec.labels)
        if not made_by_compose(labels):
            return spec
        found, why = await config_hash(labels, os.environ)
        if found is None:
            structlog.get_logger().warning(
                "compose.config_hash_unknown",
                why=why,
                consequence="a later `docker compose up -d` recreates the container",
            )
            return spec
        labels[CONFIG_HASH] = found
        return replace(spec, labels=labels)

    async def compensate(self, ctx: DeployContext) -> None:
        log = structlog.get_logger()
        began = time.monotonic()
        switched = ctx.find(Switched) or Switched()
        checked = ctx.find(BlueChecked)
        bootable = None if checked is None else checked.bootable
        if switched.blue_id is not None and switched.blue_was_running and bootable is False:
            blue = await ctx.engine.inspect(switched.blue_id)
            if blue is not None and not blue.up:
                # Started again, blue would crash-loop on the schema the migrations
                # left; whatever the new version still does beats a dead port.
                raise RestoreFailed(
                    "blue cannot boot on the schema the migrations left "
                    f"(migrate.blue_check {' '.join(ctx.config.migrate.blue_check)!r} failed "
                    f"with its image), so it was not restarted; the new version's container "
                    f"is left as {self.service.name} and blue, stopped, as {ctx.old_name}"
                )
        # Labels, not our own flags, decide what is ours to remove: the flags
        # may lag the engine when we were cancelled mid-call.
        await remove_ours(
            ctx.engine, self.service.name, ctx.deploy_id, grace=self.service.stop_timeout
        )
        if switched.blue_id is None:
            return
        blue = await ctx.engine.inspect(switched.blue_id)
        if blue is None:
            raise RestoreFailed(f"blue ({switched.blue_id[:12]}) no longer exists")
        if blue.name != self.service.name and await rename_blue(
            ctx.engine, blue.id, self.service.name, grace=self.service.stop_timeout
        ):
            blue = replace(blue, running=False)
        if switched.told_to_drain and blue.running:
            if bootable is False:
                log.warning(
                    "switch.blue_kept_drained",
                    why="blue cannot boot on the migrated schema (migrate.blue_check): it is "
                    "kept running as it is, after switch.drain_signal or drain_request",
                )
            else:
                # Asked to stop accepting, blue would go on closing its connections (or
                # refusing them) as production: a new process serves as blue did.
                log.info("switch.blue_restart", why="it was asked to drain before its stop")
                await ctx.engine.stop(blue.id, grace=self.service.stop_timeout)
                blue = replace(blue, running=False)
        if switched.blue_was_running and not blue.running:
            await ctx.engine.start(switched.blue_id)
            # Serving is enough here: "as healthy as it was found" is judged once every
            # undo has run, the rollback actions included (the guard step).
            await restore_wait(ctx, self.service, self.health, self.verify, answering=True)
            if switched.began is not None:
                ctx.measured[measures.ROLLBACK_OUTAGE] = round(time.monotonic() - switched.began, 3)
            log.info("switch.blue_restored", seconds=round(time.monotonic() - began, 3))


class _ProductionStep:
    """A step that watches the new production container the switch started."""

    needs: tuple[type, ...] = (Switched,)
    gives: tuple[type, ...] = (Verified,)

    def __init__(self, service: ServiceConfig, health: HealthConfig, verify: VerifyConfig) -> None:
        self.service = service
        self.health = health
        self.verify = verify

    async def production(self, ctx: DeployContext) -> ContainerInfo:
        production_id = ctx.get(Switched).production_id
        info = None if production_id is None else await ctx.engine.inspect(production_id)
        if info is None:
            raise ProductionFailed("production container vanished", container=self.service.name)
        return info

    async def compensate(self, ctx: DeployContext) -> None:
        pass


class VerifyProduction(_ProductionStep):
    """Production must answer healthy with the new version."""

    name = "verify"
    title = "Verifying production serves the new version"

    async def run(self, ctx: DeployContext) -> None:
        async with green_serving(ctx, "serving production's port while the new one is verified"):
            await self._verify(ctx)

    async def _verify(self, ctx: DeployContext) -> None:
        info = await self.production(ctx)
        # The engine's word on the version: production runs the image this deploy built
        # (the Brain's health has no version field to ask).
        expected = await ctx.engine.image_id(ctx.image)
        if info.image_id != expected:
            raise VerificationFailed(
                f"{self.service.name} does not run {ctx.image}",
                url=ctx.url(self.service.port, self.health.path),
                why=f"it runs image {info.image_id[:19]}, the deploy built {str(expected)[:19]}",
            )
        url = ctx.url(self.service.port, self.health.path)
        last = LastProbe()

        async def answers() -> None:
            # Past the handoff's redirect, before the port is given back: a replica that
            # must not run background work is drained before any client reaches it.
            await run_actions(ctx, "production-answers")

        try:
            with anyio.fail_after(self.verify.timeout):
                answer, _ = await await_healthy(
                    ctx,
                    container_id=info.id,
                    container_name=self.service.name,
                    since_nano=int((info.created - 1) * 1e9),
                    url=url,
                    rule=self.health,
                    interval=self.verify.interval,
                    expect_version=ctx.version,
                    last=last,
                    failure=ProductionFailed,
                    on_first_answer=(
                        answers if ctx.config.actions_at("production-answers") else None
                    ),
                )
        except TimeoutError:
            raise VerificationFailed(
                f"{self.service.name} did not serve {ctx.version} healthily within "
                f"{self.verify.timeout:g}s",
                url=url,
                why=last.explain(),
            ) from None
        now = time.monotonic()
        began = ctx.get(Switched).began
        if began is not None:
            ctx.measured[measures.SWITCH] = round(now - began, 3)
        served = ctx.find(BlueLastServed)
        if served is not None and not ctx.handoff:
            # With the handoff green serves meanwhile: there is no dark window to report.
            ctx.measured[measures.DOWNTIME_WINDOW] = round(now - served.at, 3)
        ctx.give(Verified(health=answer.body))


# Longer than the watch's state check (0.5 s) and its event's usual delay.
_DEATH_NOTICE = 1.0


class Soak(_ProductionStep):
    """Keep production watched for ``verify.soak`` s, blue stopped but kept; the point of no return.

    A version that answers healthy once and dies a second later must not be
    committed: a death (engine events, backed by the container's state) or
    one unhealthy answer during the soak rolls back to blue.
    """

    name = "soak"
    title = "Soaking the new version"
    pivot = True

    async def run(self, ctx: DeployContext) -> None:
        if self.verify.soak <= 0:
            return
        info = await self.production(ctx)
        url = ctx.url(self.service.port, self.health.path)
        async with watching(
            ctx,
            container_id=info.id,
            container_name=self.service.name,
            # From its creation: a death that came before this step is seen too.
            since_nano=int((info.created - 1) * 1e9),
            failure=ProductionFailed,
            doing="soaking",
            replay_logs=False,
        ):
            with anyio.move_on_after(self.verify.soak):
                while True:  # bounded by the soak's move_on_after
                    answer = await probe(ctx.http, url, self.health)
                    why = judge_health(answer, self.health, ctx.version)
                    if why is not None:
                        # An answer refused is most often a death (an OOM kill): the
                        # watch names it within this time, cancelling this wait.
                        await anyio.sleep(_DEATH_NOTICE)
                        raise VerificationFailed(
                            f"{self.service.name} turned unhealthy during the "
                            f"{self.verify.soak:g}s soak",
                            url=url,
                            why=why,
                        )
                    ctx.give(Verified(health=answer.body))
                    await anyio.sleep(self.verify.soak_interval)
        structlog.get_logger().info("soak.done", seconds=self.verify.soak)
