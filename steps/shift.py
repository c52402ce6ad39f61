"""The gradual traffic shift: a growing share of new connections to green, each step gated.

With ``switch.steps`` = ``[10, 50, 100]``, before the handoff proper, the kernel sends
10%, then 50% of production's *new* connections to green (nftables draws per
connection, on its first packet, so each stays on one side for its whole life;
established ones stay where they are), each step held ``switch.step_hold`` s while its
gate is checked; the last step, 100%, is the handoff itself (:class:`~steps.handoff.Redirect`).

The gate of a step: the tool's own probes through production's port as a client's
(unmarked, so split like the clients' connections) and of green's own port must all
be healthy by body, green must not die, restart, be OOM-killed or pass its memory bar
(the watch every wait of green has), and the optional metrics query must be within its
bound. A failed gate raises, and the saga's rollback gives the whole port back to blue
in one atomic change (only once blue answers), then removes green as for any rollback.

The step runs before blue's tick boundary: between steps both versions serve requests,
but only blue runs background work (green was drained at its first answer, blue is
drained only before its stop), and the tick boundary is waited for once, before 100%.
"""

from __future__ import annotations

import time
from dataclasses import replace

import anyio
import structlog

from rolling_update.toolkit import (
    DeployContext,
    GreenStarted,
    HealthConfig,
    Redirected,
    RollingUpdateError,
    ServiceConfig,
    Shifted,
    ShiftGateFailed,
    ShiftStep,
    SwitchConfig,
    check_health,
    client_session,
    judge_health,
    measures,
    probe,
    waiting,
)

from .green import watching_green
from .handoff import give_port_back


class ShiftTraffic:
    """Send a growing share of new connections to green, holding and gating each step."""

    name = "shift"
    needs = (GreenStarted,)
    gives = (Redirected, Shifted)

    def __init__(self, service: ServiceConfig, switch: SwitchConfig, health: HealthConfig) -> None:
        self.service = service
        self.switch = switch
        self.health = health
        shares = " → ".join(f"{share}%" for share in switch.shares)
        self.title = (
            f"Shifting new connections to green: {shares}, each held "
            f"{switch.step_hold:g}s and gated"
        )

    async def run(self, ctx: DeployContext) -> None:
        log = structlog.get_logger()
        if not ctx.handoff:
            log.info(
                "shift.skipped",
                why="no kernel handoff (switch.mode, its fallback, or a first deploy)",
            )
            return
        green = ctx.get(GreenStarted)
        # Both before the first change: a kill between leaves recover a table to look for,
        # and an undo cut short anywhere from here gives the port back.
        ctx.record(redirect=True)
        ctx.give(Redirected(active=True, began=time.monotonic()))
        done: list[ShiftStep] = []
        for share in self.switch.shares:
            ctx.record(shift_share=share)
            await ctx.port_handoff.to_green(share)
            step = ShiftStep(share=share, began=time.monotonic())
            self._note(ctx, [*done, step])
            log.info("shift.step", share=share, hold=self.switch.step_hold)
            try:
                answers = await self._gate(ctx, green, share)
            except RollingUpdateError as exc:
                held = round(time.monotonic() - step.began, 3)
                self._note(ctx, [*done, replace(step, held=held, gate=str(exc))])
                log.warning("shift.gate", share=share, passed=False, held=held, why=str(exc))
                raise
            held = round(time.monotonic() - step.began, 3)
            done.append(replace(step, held=held, gate="passed"))
            self._note(ctx, done)
            ctx.measured[measures.SHIFT_SHARE] = share
            log.info("shift.gate", share=share, passed=True, held=held, answers=answers)

    def _note(self, ctx: DeployContext, steps: list[ShiftStep]) -> None:
        ctx.give(Shifted(steps=tuple(steps)))
        ctx.measured[measures.SHIFT_STEPS] = [
            {"share": s.share, "held_s": s.held, "gate": s.gate} for s in steps
        ]

    async def _gate(self, ctx: DeployContext, green: GreenStarted, share: int) -> int:
        """Hold ``share`` for ``switch.step_hold`` s, probing as above; raise on the first
        failure, or when no round of probes finished in the hold. How many answers came
        through production's port."""
        cfg = self.switch
        as_client = ctx.url(self.service.port, self.health.path, as_client=True)
        own = ctx.url(self.service.green_port, self.health.path)
        doing = f"holding {share}% of new connections"
        answers = checked = 0
        async with (
            client_session() as client,
            watching_green(ctx, green, doing, memory_mb=cfg.gate_memory_mb) as watch,
        ):
            with (
                waiting(f"the {share}% step's gate", cfg.step_hold),
                anyio.move_on_after(cfg.step_hold),
            ):
                while True:  # bounded by the hold's move_on_after
                    answer = await probe(client, as_client, self.health)
                    why = judge_health(answer, self.health)
                    if why is not None:
                        raise ShiftGateFailed(
                            f"with {share}% of new connections on green, an answer through "
                            f"production's port was not healthy",
                            url=as_client, why=why, share=share,
                        )  # fmt: skip
                    answers += 1
                    _, why = await check_health(ctx.http, own, self.health, ctx.version)
                    if why is not None:
                        raise ShiftGateFailed(
                            f"with {share}% of new connections on it, green was not healthy",
                            url=own, why=why, share=share,
                        )  # fmt: skip
                    checked += 1
                    await anyio.sleep(cfg.gate_interval)
            ctx.note_green_memory(watch.memory_peak)
        if not checked:
            # A hold shorter than a probe that hangs ends before any judgement: not a pass.
            raise ShiftGateFailed(
                f"with {share}% of new connections on green, no gate probe finished within "
                f"switch.step_hold ({cfg.step_hold:g}s)",
                url=own, why=f"each probe may take health.request_timeout "
                f"({self.health.request_timeout:g}s)", share=share,
            )  # fmt: skip
        await self._metrics(ctx, share)
        return answers

    async def _metrics(self, ctx: DeployContext, share: int) -> None:
        """The metrics query, where one is configured: a number within its bound."""
        url, bound = self.switch.gate_metrics_url, self.switch.gate_metrics_max
        if url is None or bound is None:
            return
        answer = await probe(ctx.http, url, self.health)
        value = answer.body
        if answer.status != 200 or isinstance(value, bool) or not isinstance(value, int | float):
            raise ShiftGateFailed(
                f"with {share}% of new connections on green, the metrics query did not answer "
                "a number",
                url=url, why=answer.describe(), share=share,
            )  # fmt: skip
        structlog.get_logger().info("shift.metrics", share=share, value=value, bound=bound)
        if value > bound:
            raise ShiftGateFailed(
                f"with {share}% of new connections on green, the metrics query is above "
                "switch.gate_metrics_max",
                url=url, why=f"{value:g} > {bound:g}", share=share,
            )  # fmt: skip

    async def compensate(self, ctx: DeployContext) -> None:
        if not ctx.handoff_active:
            # Never begun, or the handoff's own undo has given the port back already.
            return
        await give_port_back(ctx, self.service, self.health)
