"""Wait for blue's tick loop to reach a safe boundary before the switch."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import anyio
import structlog

from rolling_update.toolkit import (
    BlueLastServed,
    DeployContext,
    GreenStarted,
    HealthConfig,
    ServiceConfig,
    TickConfig,
    TickWaitFailed,
    parse_tick,
    probe,
    tick_state,
    waiting,
)

from .green import watching_green

_UNUSABLE_IN_A_ROW = 3


async def wait_for_tick_boundary(
    ctx: DeployContext, url: str, cfg: TickConfig, health: HealthConfig, *, settle: float
) -> None:
    """Return once blue is not ticking, has been idle ``settle`` s, and no tick is due.

    The caller bounds it in time. Records blue's last good answer in
    ``ctx.last_blue_ok``, the start of the downtime window estimate.
    """
    log = structlog.get_logger()
    unusable = 0
    settled = settle <= 0
    state_before = ""
    stale_said = False
    while True:
        answer = await probe(ctx.http, url, health)
        try:
            status = parse_tick(answer)
        except ValueError as exc:
            unusable += 1
            if unusable >= _UNUSABLE_IN_A_ROW:
                raise TickWaitFailed(f"blue's tick status at {url} is unusable: {exc}") from None
            await anyio.sleep(cfg.interval)
            continue
        unusable = 0
        now = datetime.now(UTC)
        due_in = (status.next_tick - now).total_seconds() if status.next_tick else None
        state = tick_state(status, now, cfg.guard, cfg.overdue)
        if state == "stale":
            if not stale_said:
                log.warning(
                    "tick.next_tick_stale",
                    overdue_s=None if due_in is None else round(-due_in, 1),
                    why=f"next_tick is more than tick.overdue = {cfg.overdue:g}s in the past: "
                    "only tick_running decides",
                )
                stale_said = True
            state = "idle"
        pause = cfg.interval
        if state == "running":
            settled = settle <= 0
        elif state == "idle" and not settled:
            state, pause = "settling", settle
            settled = True
        elif state == "idle":
            ctx.give(BlueLastServed(at=time.monotonic()))
            log.info("tick.boundary", next_tick_in=None if due_in is None else round(due_in, 1))
            return
        if state != state_before:
            log.info(
                "tick.wait", state=state, next_tick_in=None if due_in is None else round(due_in, 1)
            )
            state_before = state
        await anyio.sleep(pause)


class AwaitTickBoundary:
    """Wait while blue runs a tick, then let it settle; skip when there is no blue."""

    name = "tick-boundary"
    title = "Waiting for blue's tick to finish"

    def __init__(self, service: ServiceConfig, cfg: TickConfig, health: HealthConfig) -> None:
        self.service = service
        self.cfg = cfg
        self.health = health

    async def run(self, ctx: DeployContext) -> None:
        log = structlog.get_logger()
        if not self.cfg.enabled:
            log.info("tick.skipped", reason="tick.enabled is false")
            return
        blue = await ctx.engine.inspect(self.service.name)
        if blue is None or not blue.running:
            log.info("tick.skipped", reason=f"no running {self.service.name}")
            return
        url = ctx.url(self.service.port, self.cfg.path)
        limit, bound = ctx.wait_limit(self.cfg.timeout)
        try:
            async with AsyncExitStack() as stack:
                green = ctx.find(GreenStarted)
                if green is not None:
                    # Green keeps being watched (death, memory, two-container
                    # deadline) while it waits for blue's tick.
                    watch = await stack.enter_async_context(
                        watching_green(ctx, green, "waiting for blue's tick")
                    )
                    stack.callback(lambda: ctx.note_green_memory(watch.memory_peak))
                with anyio.fail_after(limit), waiting("blue's tick boundary", limit):
                    await wait_for_tick_boundary(
                        ctx, url, self.cfg, self.health, settle=self.cfg.settle
                    )
        except TimeoutError:
            raise TickWaitFailed(
                f"blue's tick did not reach a safe boundary within {bound} (tick.timeout)"
            ) from None

    async def compensate(self, ctx: DeployContext) -> None:
        pass
