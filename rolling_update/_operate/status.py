"""``status``: what serves, since when, how healthy now, the last deploy, anything unfinished.

It only reads: the engine, the state directory, one probe of production (past a
redirect in place).
"""

from __future__ import annotations

import fcntl
import os
from typing import Any

import aiohttp

from rolling_update._config.settings import Config
from rolling_update._deploy.preflight import version_of
from rolling_update._deploy.session import open_engine, open_http
from rolling_update._engine.model import LABEL_ROLE, Engine
from rolling_update._handoff.nft import Firewall, LocalFirewall
from rolling_update._handoff.port import PortHandoff
from rolling_update._observe.history import read
from rolling_update._state.journal import Journal
from rolling_update._state.lock import read_holder
from rolling_update._state.mark import marker_name
from rolling_update._watch.probe import check_health


def lock_holder(cfg: Config) -> dict[str, Any] | None:
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
    cfg: Config,
    *,
    engine: Engine | None = None,
    firewall: Firewall | None = None,
    http: aiohttp.ClientSession | None = None,
) -> dict[str, Any]:
    """What serves, since when, how healthy now, the last deploy, and anything unfinished."""
    svc = cfg.service
    firewall = firewall or LocalFirewall()
    report: dict[str, Any] = {"service": svc.name}
    async with open_engine(engine, cfg.engine) as docker, open_http(http) as http:
        raw = await docker.inspect_raw(svc.name)
        info = await docker.inspect(svc.name)
        production: dict[str, Any] | None = None
        handoff = PortHandoff.of(firewall, svc)
        redirect = await handoff.target()
        # Production's own listener, past a redirect to green that is in place.
        port = handoff.probe_port(svc.port, redirected=redirect is not None)
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
        report["redirect_to"] = None if redirect is None else redirect.to_port
        report["redirect_share"] = None if redirect is None else redirect.share
    journal = Journal.load(Journal.path_for(cfg.state_dir))
    report["unfinished"] = journal.describe() if journal else None
    report["lock_holder"] = lock_holder(cfg)
    runs = [e for e in read(cfg.state_dir) if e.kind in ("deploy", "rollback")]
    report["last_deploy"] = runs[-1].model_dump() if runs else None
    return report
