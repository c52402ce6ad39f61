"""Lifecycle HTTP actions: calls the deploy makes at named moments (``[[actions]]``).

The reference service needs them to deploy without dispatching work twice:
green is drained as soon as it answers (its tick loop runs, since enablement
lives in the shared database, but dispatches nothing), blue is drained before
its SIGTERM, and a rollback cancels blue's drain and restarts its tick loop
where something stopped it (``unless`` skips a call that is not needed).
Each action is bounded by its own timeout and its wait's, and before the
switch also by what is left of ``limits.two_containers``.
"""

from __future__ import annotations

import json

import aiohttp
import anyio
import structlog

from rolling_update._config.settings import ActionConfig, Moment
from rolling_update._deploy.context import DeployContext
from rolling_update._errors import ActionFailed, EngineError
from rolling_update._observe.logs import redactor
from rolling_update._observe.progress import waiting
from rolling_update._watch.probe import dotted, probe


def _port(ctx: DeployContext, action: ActionConfig) -> int:
    service = ctx.config.service
    return service.green_port if action.target == "green" else service.port


# Before the switch an action's waits count against the dual-run budget.
_BEFORE_SWITCH: tuple[Moment, ...] = ("green-answers", "green-healthy", "before-switch")


def _limit(ctx: DeployContext, action: ActionConfig, own: float) -> tuple[float, str]:
    if action.moment in _BEFORE_SWITCH:
        return ctx.wait_limit(own)
    return own, f"{own:g}s"


async def _call(ctx: DeployContext, action: ActionConfig, url: str) -> None:
    limit, bound = _limit(ctx, action, action.timeout)
    try:
        with anyio.fail_after(limit):
            async with ctx.http.request(
                action.method, url, json=action.body, allow_redirects=False
            ) as response:
                status = response.status
                text = (await response.text(errors="replace"))[:300]
    except TimeoutError:
        raise ActionFailed(f"{action.name}: no answer within {bound}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise ActionFailed(f"{action.name}: {type(exc).__name__}: {exc}") from None
    if status != action.expect_status:
        raise ActionFailed(
            f"{action.name}: {action.method} {url} answered HTTP {status} "
            f"(expected {action.expect_status}): {redactor.scrub(text)}"
        )


async def _wait(ctx: DeployContext, action: ActionConfig, port: int) -> None:
    rule = action.wait
    assert rule is not None
    url = ctx.url(port, rule.path)
    health = ctx.config.health
    seen = "no answer yet"
    limit, bound = _limit(ctx, action, rule.timeout)
    shown = f"{action.name}: {rule.field} = {json.dumps(rule.equals)}"
    try:
        with anyio.fail_after(limit), waiting(shown, limit):
            while True:  # bounded by the wait's own timeout
                answer = await probe(ctx.http, url, health)
                found = dotted(answer.body, rule.field) if answer.error is None else None
                if found == rule.equals and type(found) is type(rule.equals):
                    return
                seen = answer.describe()
                await anyio.sleep(rule.interval)
    except TimeoutError:
        raise ActionFailed(
            f"{action.name}: {rule.field} did not become {json.dumps(rule.equals)} at {url} "
            f"within {bound} (last answer: {seen})"
        ) from None


async def _needless(ctx: DeployContext, action: ActionConfig, port: int) -> str | None:
    """What makes the call needless (its ``unless`` holds), or ``None``: make it."""
    rule = action.unless
    if rule is None:
        return None
    url = ctx.url(port, rule.path)
    with anyio.fail_after(_limit(ctx, action, action.timeout)[0]):
        answer = await probe(ctx.http, url, ctx.config.health)
    found = dotted(answer.body, rule.field) if answer.error is None else None
    if found == rule.equals and type(found) is type(rule.equals):
        return f"{rule.field} is {json.dumps(rule.equals)} at {url}"
    return None


async def run_action(ctx: DeployContext, action: ActionConfig) -> None:
    """Make one call, then wait for its rule; an optional action's failure is only logged."""
    log = structlog.get_logger()
    port = _port(ctx, action)
    url = ctx.url(port, action.path)
    try:
        why = await _needless(ctx, action, port)
    except TimeoutError:
        why = None
    if why is not None:
        log.info("action.skipped", action=action.name, why=why)
        return
    log.info(
        "action.started", action=action.name, target=action.target, method=action.method, url=url
    )
    try:
        await _call(ctx, action, url)
        if action.wait is not None:
            await _wait(ctx, action, port)
    except ActionFailed as exc:
        if not action.optional:
            raise
        log.warning("action.failed", action=action.name, error=str(exc), optional=True)
        return
    log.info("action.done", action=action.name)


async def run_actions(ctx: DeployContext, moment: Moment) -> None:
    for action in ctx.config.actions_at(moment):
        await run_action(ctx, action)


async def ask_to_stop_accepting(ctx: DeployContext, container_id: str) -> None:
    """``switch.drain_signal``, then ``switch.drain_request``, to blue: for a service that
    then closes its idle keep-alive connections and answers ``Connection: close``. Sent once
    new connections reach green, before the wait for blue's connections; the caller bounds
    it. A failure is logged, never raised: the action only shortens a wait that has its own
    bound, and blue's SIGTERM comes after it either way."""
    log = structlog.get_logger()
    cfg = ctx.config.switch
    if cfg.drain_signal is not None:
        try:
            await ctx.engine.kill(container_id, cfg.drain_signal)
        except EngineError as exc:
            log.warning(
                "switch.drain_signal", signal=cfg.drain_signal, container=container_id[:12],
                error=str(exc), consequence="blue's connections are waited for as they are",
            )  # fmt: skip
        else:
            log.info("switch.drain_signal", signal=cfg.drain_signal, container=container_id[:12])
    action = cfg.drain_action
    if action is not None:
        await run_action(ctx, action)
