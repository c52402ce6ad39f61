"""Operating commands: ``status``, ``history``, ``plan`` and ``rollback``.

``status`` and ``plan`` only read (the engine, the state directory, one
health probe); ``rollback`` is a deploy of an image that already exists,
through the same safe flow, without the build and the migrations.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any

import structlog

from rolling_update._config.settings import Config
from rolling_update._deploy.context import DeployContext
from rolling_update._deploy.deploy import DeployResult, deploy, guarded
from rolling_update._deploy.outcome import Outcome
from rolling_update._deploy.plan import PlanFactory, default_plan
from rolling_update._deploy.preflight import already_serving, preflight, version_of
from rolling_update._deploy.release import prepare
from rolling_update._deploy.saga import SagaState
from rolling_update._deploy.session import http_session, open_engine
from rolling_update._deploy.twin import diff
from rolling_update._engine.builder import choose_builder
from rolling_update._engine.model import LABEL_ROLE, Engine
from rolling_update._errors import ConfigError, PreflightError
from rolling_update._handoff.nft import Firewall, LocalFirewall
from rolling_update._handoff.port import PortHandoff
from rolling_update._observe.history import HistoryEntry, read
from rolling_update._state.journal import Journal
from rolling_update._state.lock import read_holder
from rolling_update._state.mark import marker_name
from rolling_update._watch.probe import check_health


def _lock_holder(cfg: Config) -> dict[str, Any] | None:
    """Who holds the service's lock now, or ``None`` (tested without taking it for long)."""
    path = cfg.state_dir / "lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return read_holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


async def status(
    cfg: Config, *, engine: Engine | None = None, firewall: Firewall | None = None
) -> dict[str, Any]:
    """What serves, since when, how healthy now, the last deploy, and anything unfinished."""
    svc = cfg.service
    firewall = firewall or LocalFirewall()
    report: dict[str, Any] = {"service": svc.name}
    async with open_engine(engine) as docker, http_session() as http:
        raw = await docker.inspect_raw(svc.name)
        info = await docker.inspect(svc.name)
        production: dict[str, Any] | None = None
        handoff = PortHandoff.of(firewall, svc)
        redirect_to = await handoff.target()
        # Production's own listener, past a redirect to green that is in place.
        port = handoff.probe_port(svc.port, redirected=redirect_to is not None)
        if raw is not None and info is not None:
            url = svc.url(port, cfg.health.path)
            _answer, health = await check_health(http, url, cfg.health, version_of(info))
            production = {
                "container": info.id[:12],
                "image": info.image,
                "version": version_of(info),
                "running": info.running,
                "since": (raw.get("State") or {}).get("StartedAt"),
                "healthy": health is None,
                "health": "healthy" if health is None else health,
                "docker_health": info.health,
            }
        report["production"] = production
        leftovers = []
        for name in (svc.green_name, svc.old_name, svc.migrate_name):
            found = await docker.inspect(name)
            if found is not None:
                role = found.labels.get(LABEL_ROLE, "not made by rolling_update")
                leftovers.append({"name": name, "running": found.running, "role": role})
        report["leftovers"] = leftovers
        report["engine_mark"] = await docker.read_marker(marker_name(svc.name))
        report["redirect_to"] = redirect_to
    journal = Journal.load(Journal.path_for(cfg.state_dir))
    report["unfinished"] = journal.describe() if journal else None
    report["lock_holder"] = _lock_holder(cfg)
    runs = [e for e in read(cfg.state_dir) if e.kind in ("deploy", "rollback")]
    report["last_deploy"] = runs[-1].model_dump() if runs else None
    return report


def format_status(report: dict[str, Any]) -> str:
    lines = [f"service      {report['service']}"]
    prod = report["production"]
    if prod is None:
        lines.append("production   none")
    else:
        state = "running" if prod["running"] else "stopped"
        lines += [
            f"production   {prod['container']} {prod['image']} (version {prod['version']}), "
            f"{state} since {prod['since']}",
            f"health       {prod['health']}"
            + (f" (docker: {prod['docker_health']})" if prod["docker_health"] else ""),
        ]
    last = report["last_deploy"]
    if last is None:
        lines.append("last deploy  none recorded")
    else:
        figures = last["measured"]
        shown = ("downtime_window_s", "handoff_s", "handoff_failed_requests")
        extra = [f"{k}={figures[k]}" for k in shown if k in figures]
        lines.append(
            f"last deploy  {last['id']} {last['kind']} {last['from_version']} -> "
            f"{last['to_version']}: {last['result']} in {last['seconds']:.1f}s at "
            f"{last['ended_at']} by {last['user']}@{last['host']}"
            + (f" ({', '.join(extra)})" if extra else "")
        )
    holder = report["lock_holder"]
    lines.append(
        "lock         "
        + (f"held by {holder.get('purpose')} {holder.get('deploy_id')} (pid {holder.get('pid')} "
           f"on {holder.get('host')}) since {holder.get('since')}" if holder else "free")
    )  # fmt: skip
    lines.append(f"unfinished   {report['unfinished'] or 'none'}")
    if report["engine_mark"]:
        lines.append(f"engine mark  {report['engine_mark']}")
    if report["redirect_to"]:
        lines.append(f"redirect     port -> {report['redirect_to']} (handoff in place)")
    for left in report["leftovers"]:
        lines.append(
            f"leftover     {left['name']} ({left['role']}, "
            f"{'running' if left['running'] else 'stopped'})"
        )
    return "\n".join(lines)


def format_history(entries: list[HistoryEntry]) -> str:
    rows = [
        f"{'ID':<13}{'WHEN':<27}{'KIND':<9}{'FROM -> TO':<22}{'RESULT':<21}{'TOOK':>7}  WHO",
    ]
    for e in entries:
        versions = f"{e.from_version or '-'} -> {e.to_version or '-'}"
        rows.append(
            f"{e.id:<13}{e.ended_at:<27}{e.kind:<9}{versions:<22}{e.result:<21}"
            f"{e.seconds:>6.1f}s  {e.user}@{e.host}"
            + (f"\n{'':<13}reason: {e.reason}" if e.reason and e.result != Outcome.DEPLOYED else "")
        )
    return "\n".join(rows)


async def plan(
    cfg: Config,
    *,
    engine: Engine | None = None,
    firewall: Firewall | None = None,
    copied_from: str | None = None,
    plan: PlanFactory = default_plan,
) -> dict[str, Any]:
    """What a deploy would do now: its steps, specs, diff against blue, rules; changes nothing.

    ``copied_from`` names the canary a host after it gets the image from.
    """
    release = prepare(cfg)
    steps = guarded(cfg, plan(cfg))
    async with open_engine(engine) as docker, http_session() as http:
        found = await preflight(
            cfg, docker, http, release, firewall, image_arrives=copied_from is not None
        )
        ctx = DeployContext(
            config=cfg,
            engine=docker,
            http=http,
            deploy_id="(plan)",
            version=release.version,
            image=release.image,
            env=dict(release.env),
            twin=found.twin,
            blue_raw=found.blue_raw,
            handoff=found.handoff,
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
        "version": release.version,
        "image": release.image,
        "steps": [{"name": s.name, "title": s.title} for s in steps],
        "switch": "handoff" if found.handoff else "restart",
        "blue": None
        if found.blue is None
        else {"image": found.blue.image, "version": version_of(found.blue)},
        "already_serving": already_serving(found.blue, release.version),
        "diff_against_blue": diff(found.blue_raw, production, found.twin)
        if found.blue_raw
        else None,
        "production_spec": _public(production),
        "green_spec": _public(green.to_api()),
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


def _public(body: dict[str, Any]) -> dict[str, Any]:
    """A create body fit to print: env values out (they may be secrets), names kept."""
    shown = dict(body)
    shown["Env"] = sorted(item.partition("=")[0] + "=…" for item in body.get("Env") or [])
    return shown


def format_plan(report: dict[str, Any]) -> str:
    blue = report["blue"]
    actions = report["actions"]
    came = f"{blue['version'] or blue['image']}" if blue else "nothing (first deploy)"
    diff = report["diff_against_blue"]
    lines = [
        f"plan for {report['service']}: {came} -> {report['version']} ({report['image']})",
        *([f"warning: {report['already_serving']}: deploy refuses it without --force"]
          if report["already_serving"] else []),
        f"blue: {blue['image']} ({blue['version']})" if blue else "blue: none (first deploy)",
        f"switch: {report['switch']}",
        "steps:",
        *(f"  {i}. {s['name']:<15} {s['title']}" for i, s in enumerate(report["steps"], 1)),
        f"build: {json.dumps(report['build'])}",
        f"migrations: {json.dumps(report['migrations'])}",
        f"rollback after the switch: {report['rollback_after_switch']}",
        f"extra tags: {', '.join(report['tags']) or '(none)'}",
        f"health: GET {report['health']['path']} expecting {report['health']['expect_status']} "
        f"{json.dumps(report['health']['expect_json'])}"
        + (f", version at {report['health']['version_path'] or report['health']['path']}"
           f" ({report['health']['version_field']})" if report['health']['version_field'] else ""),
        f"tick: {json.dumps(report['tick'])}",
        "new production container differs from blue in:",
        *(f"  {line}" for line in (
            ["(no blue)"] if diff is None else diff or ["nothing but the tool's labels"])),
        *(f"action: {a['moment']} {a['target']} {a['method']} {a['path']}" for a in actions),
    ]  # fmt: skip
    return "\n".join(lines)


async def known_versions(cfg: Config, docker: Engine) -> list[str]:
    """Versions whose image exists for the image name template (newest first)."""
    template = cfg.image.name
    repository, _, tag = template.rpartition(":")
    if tag != "{version}" or not repository:
        return []
    found = await docker.list_images({}, reference=repository)
    versions = []
    for image in found:
        for ref in image.tags:
            repo, _, version = ref.rpartition(":")
            if repo == repository and version not in versions:
                versions.append(version)
    return versions


async def rollback(
    cfg: Config,
    version: str | None,
    *,
    engine: Engine | None = None,
    state: SagaState | None = None,
    firewall: Firewall | None = None,
    plan: PlanFactory = default_plan,
) -> DeployResult:
    """Deploy ``version`` (default: the one before what serves) with ``plan``'s steps less its
    build and migrations."""
    log = structlog.get_logger()
    async with open_engine(engine) as docker:
        known = await known_versions(cfg, docker)
        current = version_of(await docker.inspect(cfg.service.name))
    if version is None:
        runs = [e for e in read(cfg.state_dir) if e.result == Outcome.DEPLOYED]
        previous = [e.from_version for e in runs if e.to_version == current and e.from_version]
        if not previous:
            raise PreflightError(
                f"no previous version of {cfg.service.name} is recorded in its history; "
                f"name one: {', '.join(known) or 'no images found'}"
            )
        version = previous[-1]
    if version not in known:
        raise ConfigError(
            f"no image for version {version!r}; known versions: {', '.join(known) or 'none'}",
            key="rollback VERSION",
        )
    log.info(
        "rollback.plan", to=version, current=current, skipped="build and migrations (the image "
        "exists; migrations are not undone)",
    )  # fmt: skip
    steps = [s for s in plan(cfg) if s.name not in ("build", "migrate")]
    return await deploy(
        cfg,
        steps=steps,
        engine=engine,
        state=state,
        version=version,
        kind="rollback",
        firewall=firewall,
    )
