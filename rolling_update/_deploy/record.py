"""What a deploy leaves behind when it ends: the audit log's entry, hooks, metrics, timeline."""

from __future__ import annotations

import time

import structlog

from rolling_update._config.settings import Config
from rolling_update._deploy.context import DeployContext
from rolling_update._deploy.hooks import run_post_hook
from rolling_update._deploy.outcome import Outcome
from rolling_update._deploy.records import GreenStarted, Redirected, Shifted, Switched
from rolling_update._deploy.saga import SagaState
from rolling_update._observe import measures
from rolling_update._observe.history import Attempt
from rolling_update._observe.history import append as history_append
from rolling_update._observe.metrics import write_metrics
from rolling_update._observe.timeline import build as build_timeline


def moments(ctx: DeployContext) -> dict[str, float | None]:
    """What the timeline marks, from what the steps noted (monotonic times)."""
    measured = ctx.measured
    began = (ctx.find(Switched) or Switched()).began
    green = ctx.find(GreenStarted)
    redirected = ctx.find(Redirected) or Redirected(active=False)
    stopped = (
        began + measured[measures.BLUE_STOP]
        if began is not None and measures.BLUE_STOP in measured
        else None
    )
    serving = (
        began + measured[measures.SWITCH]
        if began is not None and measures.SWITCH in measured
        else None
    )
    shifted = ctx.find(Shifted) or Shifted()
    handoff = redirected.began
    if shifted.steps and handoff is not None and handoff <= shifted.steps[0].began:
        handoff = None  # the shift's own: the handoff (100%) never came
    steps = {f"{s.share}% of new connections to green": s.began for s in shifted.steps}
    return {
        "green started: two versions from here": None if green is None else green.started,
        **steps,
        "traffic moved to green (the handoff)": handoff,
        "blue stopped": stopped,
        "the new production container serves": serving,
        "traffic on the new production container": redirected.ended,
    }


async def record_end(
    cfg: Config, attempt: Attempt, result: Outcome, error: BaseException | None, seconds: float
) -> None:
    """Audit log, then hooks and metrics: none of them may change how the deploy ended."""
    reason = None if error is None else str(error) or type(error).__name__
    entry = attempt.entry(cfg.service.name, result, reason=reason, seconds=seconds)
    history_append(cfg.state_dir, entry)
    if result is Outcome.REFUSED:
        return
    # A production found dead past the commit rolled nothing back: the deploy happened.
    hook = "post_deploy" if result.committed else "post_rollback"
    await run_post_hook(cfg, hook, entry)
    write_metrics(cfg)


def record_timeline(
    attempt: Attempt, progress: SagaState, ctx: DeployContext, began: float
) -> None:
    attempt.timeline = build_timeline(
        progress.phases, began, time.monotonic(), moments(ctx), ctx.measured
    )
    structlog.get_logger().info("deploy.timeline", timeline=attempt.timeline)
