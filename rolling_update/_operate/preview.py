"""``plan``: what a deploy would do now (its steps, specs, diff against blue, rules);
changes nothing.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from rolling_update._config.settings import Config
from rolling_update._deploy.context import DeployContext
from rolling_update._deploy.deploy import guarded
from rolling_update._deploy.plan import PlanFactory, default_plan
from rolling_update._deploy.preflight import already_serving, preflight, version_of
from rolling_update._deploy.records import check_plan
from rolling_update._deploy.release import prepare
from rolling_update._deploy.session import open_engine, open_http
from rolling_update._deploy.twin import diff
from rolling_update._engine.builder import choose_builder
from rolling_update._engine.model import Engine
from rolling_update._handoff.nft import Firewall, LocalFirewall
from rolling_update._observe.logs import redactor
from rolling_update._operate.recover import preview as preview_recover
from rolling_update._operate.render import public_body


async def plan(
    cfg: Config,
    *,
    engine: Engine | None = None,
    firewall: Firewall | None = None,
    copied_from: str | None = None,
    image_arrives: bool = False,
    plan: PlanFactory = default_plan,
    http: aiohttp.ClientSession | None = None,
) -> dict[str, Any]:
    """What a deploy would do now: its steps, specs, diff against blue, rules; changes nothing.

    ``image_arrives``: a unit after the canary, whose image is built (or copied) before its
    deploy; ``copied_from`` names the canary it is copied from, if it is.
    """
    release = prepare(cfg)
    steps = guarded(cfg, plan(cfg))
    check_plan(steps)
    async with open_engine(engine, cfg.engine) as docker, open_http(http) as http:
        finish = await preview_recover(cfg, docker, firewall or LocalFirewall())
        found = await preflight(cfg, docker, http, release, firewall, image_arrives=image_arrives)
        ctx = DeployContext(
            config=cfg,
            engine=docker,
            http=http,
            deploy_id="(plan)",
            release=release,
            found=found,
        )
        svc = cfg.service
        production = ctx.spec("production", svc.name, svc.port).to_api()
        green = ctx.spec("green", svc.green_name, svc.green_port, overrides=cfg.green.env)
        build: dict[str, Any] = {"enabled": cfg.build.enabled, "image": release.image}
        if cfg.build.enabled and cfg.build.command is None:
            builder, why = await choose_builder(cfg.build)
            build.update(builder=builder, why=why, context=str(cfg.build.context))
        elif cfg.build.command is not None:
            build["command"] = cfg.build.command
        if copied_from is not None:
            via = cfg.rollout.distribute
            build["copied_from"] = copied_from
            build["via"] = "registry (push, pull)" if via == "registry" else "save into load"
    return {
        "service": svc.name,
        "recover": finish,
        "version": release.version,
        "image": release.image,
        "steps": [{"name": s.name, "title": s.title} for s in steps],
        "switch": "handoff" if found.handoff else "restart",
        "shift": shift_plan(cfg, handoff=found.handoff),
        "blue": None
        if found.blue is None
        else {"image": found.blue.image, "version": version_of(found.blue)},
        "already_serving": already_serving(found.blue, release.version),
        "diff_against_blue": diff(found.blue_raw, production, found.twin)
        if found.blue_raw
        else None,
        "production_spec": public_body(production),
        "green_spec": public_body(green.to_api()),
        "health": cfg.health.model_dump(mode="json"),
        "tick": cfg.tick.model_dump(mode="json"),
        "build": build,
        "migrations": cfg.migrate.commands,
        "tags": cfg.image.tags,
        "rollback_after_switch": rollback_after_switch(cfg, found.blue is not None),
        "actions": [a.model_dump(mode="json") for a in cfg.actions],
    }


def rollback_after_switch(cfg: Config, has_blue: bool) -> str:
    """What a rollback after the switch (blue stopped) can do, as the plan says it."""
    check = " ".join(cfg.migrate.blue_check)
    if not has_blue:
        return "nothing to go back to (first deploy): the new container is removed"
    if not cfg.migrate.commands:
        return "restarts blue (no migrations run)"
    if not check:
        return (
            "restarts blue; nothing checks that it boots on the schema the migrations "
            "leave (migrate.blue_check is empty)"
        )
    return (
        f"restarts blue only if `{check}` passes with blue's image after the migrations "
        "(checked during the deploy, before the switch); if it fails, blue is not "
        "restarted and the deploy ends with exit 3, the new version left as it is"
    )


def shift_plan(cfg: Config, *, handoff: bool) -> str:
    """The gradual shift's steps and gate (``switch.steps``), as the plan says them."""
    sw = cfg.switch
    if not sw.shares:
        return "none: straight to the handoff (switch.steps = [100])"
    steps = " -> ".join(f"{share}%" for share in sw.steps)
    memory = sw.gate_memory_mb or cfg.limits.green_memory_mb
    gate = [
        "every answer through production's port and of green healthy",
        "green not dead, restarted or OOM-killed",
        f"green under {memory:g} MB" if memory else "no memory bar",
    ]
    if sw.gate_metrics_url is not None:
        # Printed as it is, unlike logs: its userinfo (registered by prepare) is blanked here.
        gate.append(f"{redactor.scrub(sw.gate_metrics_url)} <= {sw.gate_metrics_max:g}")
    text = f"{steps} of new connections to green, each step below 100% held {sw.step_hold:g}s; "
    text += f"gate: {', '.join(gate)}; a failed gate gives the port back to blue"
    return text if handoff else f"skipped (no kernel handoff): {text}"
