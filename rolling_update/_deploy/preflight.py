"""The preflight: everything checked before a deploy changes anything.

What it finds (blue, its health, its twin, whether the handoff can be used) is
handed to the deploy as a frozen :class:`Preflight`; a problem refuses the deploy
(exit 2) with nothing touched.
"""

from __future__ import annotations

import aiohttp
import structlog

from rolling_update._config.settings import Config
from rolling_update._deploy.compose import environment_keys
from rolling_update._deploy.policy import in_the_way
from rolling_update._deploy.records import Preflight
from rolling_update._deploy.release import Release
from rolling_update._deploy.twin import Twin
from rolling_update._engine.builder import choose_builder
from rolling_update._engine.model import LABEL_VERSION, ContainerInfo, Engine
from rolling_update._errors import HandoffError, PreflightError
from rolling_update._handoff.connections import listening
from rolling_update._handoff.nft import Firewall, LocalFirewall
from rolling_update._handoff.port import PortHandoff
from rolling_update._state.journal import refuse_unfinished
from rolling_update._state.mark import marker_name, refuse_marked
from rolling_update._watch.probe import HealthBaseline, port_in_use, probe


def version_of(container: ContainerInfo | None) -> str | None:
    """The version a container runs: our label, else its image's tag."""
    if container is None:
        return None
    label = container.labels.get(LABEL_VERSION)
    if label:
        return label
    _, sep, tag = container.image.rpartition(":")
    return tag if sep and "/" not in tag else None


def already_serving(blue: ContainerInfo | None, version: str) -> str | None:
    """Why deploying ``version`` would change nothing (production runs it), or ``None``."""
    if blue is None or not blue.running or version_of(blue) != version:
        return None
    return f"version {version} is what production already runs ({blue.image})"


async def preflight(
    cfg: Config,
    docker: Engine,
    http: aiohttp.ClientSession,
    release: Release,
    firewall: Firewall | None = None,
    *,
    image_arrives: bool = False,
) -> Preflight:
    """Check every name and port the deploy will need, and read blue; changes nothing.

    Raises :class:`PreflightError`: exit 2, and truly nothing was changed.
    The steps check names and ports again when they need them (the build
    and migrations leave time for them to change), with a truthful message.
    ``image_arrives``: the image is not built here but copied before the
    deploy (a host after the canary), so its absence now is no reason to stop.
    """
    svc = cfg.service
    missing = not image_arrives and not cfg.build.enabled
    if missing and not await docker.image_exists(release.image):
        raise PreflightError(f"image {release.image} does not exist and build is disabled")
    if cfg.build.enabled and cfg.build.command is None:
        # Imported here: the steps package imports this one. Raises when BuildKit is
        # required (build.builder = "buildkit") and cannot be had.
        await choose_builder(cfg.build)
    blue = await docker.inspect(svc.name)
    needed = [svc.green_name, svc.migrate_name] + ([svc.old_name] if blue is not None else [])
    found = {name: await docker.inspect(name) for name in needed}
    for info in found.values():
        why = in_the_way(info, svc.name)
        if why is not None:
            raise PreflightError(f"{why}; remove or rename it, or run `rolling-update recover`")
    stale_green = found[svc.green_name]
    # A stale green of ours may hold the port itself; start-green removes it, then checks.
    if (stale_green is None or not stale_green.running) and await port_in_use(
        svc.host, svc.green_port
    ):
        raise PreflightError(
            f"port {svc.green_port} (service.green_port) is already in use; green could not bind it"
        )
    log = structlog.get_logger()
    blue_raw = await docker.inspect_raw(svc.name) if blue is not None else None
    twin = None
    if blue_raw is not None:
        old_image = await docker.image_config(str(blue_raw.get("Image", "")))
        blue_labels = (blue_raw.get("Config") or {}).get("Labels") or {}
        compose_env, unread = environment_keys(blue_labels)
        if unread is not None:
            log.warning(
                "twin.compose_file_unread",
                why=f"blue was made by compose, but {unread}: the env file wins for every key",
            )
        twin = Twin.of(blue_raw, old_image, compose_env=compose_env)
        conflicts = twin.conflicts(blue_raw, svc.port)
        if conflicts:
            raise PreflightError(
                f"green, blue's twin, cannot run beside blue: {'; '.join(conflicts)}"
            )
        _, rewrite = twin.green_healthcheck(svc.port, svc.green_port)
        if rewrite:
            log.info("twin.green_healthcheck", port=svc.port, done=rewrite)
        elif twin.network_mode == "host" and twin.healthcheck_names_port(old_image, svc.port):
            log.warning(
                "twin.healthcheck_names_production_port",
                port=svc.port,
                why="on the host network, green's Docker healthcheck (its image's) would "
                "probe blue",
            )
    handoff = await _handoff_possible(
        cfg, twin, firewall or LocalFirewall(), serving=blue is not None and blue.running
    )
    baseline = None
    if blue is not None and blue.running:
        answer = await probe(http, svc.url(svc.port, cfg.health.path), cfg.health)
        baseline = HealthBaseline.of(answer, cfg.health)
        log.info("preflight.blue_health", healthy=baseline.healthy, answer=baseline.found)
    return Preflight(blue=blue, blue_health=baseline, blue_raw=blue_raw, twin=twin, handoff=handoff)


async def _handoff_possible(
    cfg: Config, twin: Twin | None, firewall: Firewall, *, serving: bool
) -> bool:
    """Whether switch.mode = handoff can be used; one log line saying why not, if not.
    ``serving``: blue runs (its published port then has the engine's listener)."""
    if cfg.switch.mode != "handoff":
        return False
    handoff = PortHandoff.of(firewall, cfg.service)
    if await handoff.any_table():
        raise PreflightError(
            f"an nftables redirect of an earlier deploy (table inet {handoff.table}) is in place; "
            "run `rolling-update recover`"
        )
    if twin is None:
        # No blue: nothing to hand over from (and a remote helper has no image yet).
        return False
    why = twin.handoff_obstacle(cfg.service.port) or await firewall.unavailable()
    if why is None and twin.network_mode != "host" and serving:
        why = await _no_proxy(firewall, cfg.service.port)
    if why is not None:
        structlog.get_logger().warning(
            "switch.mode", mode="restart", wanted="handoff", why=f"no kernel handoff: {why}"
        )
        return False
    return True


async def _no_proxy(firewall: Firewall, port: int) -> str | None:
    """Why a redirect of a published ``port`` would reach no listener, or ``None``: the
    redirect needs the engine's listener for green's published port (docker-proxy, or a
    rootless engine's port driver), which blue's published port shows."""
    try:
        tables = await firewall.host_tables()
    except HandoffError as exc:
        return f"cannot tell whether the engine's docker-proxy listens on port {port}: {exc}"
    if listening(tables, port):
        return None
    return (
        f"nothing on the host listens on blue's published port {port}: the engine publishes "
        "ports without docker-proxy (userland-proxy false), so a redirect cannot reach "
        "green's published port"
    )


async def refuse_or_preflight(
    cfg: Config,
    docker: Engine,
    http: aiohttp.ClientSession,
    release: Release,
    firewall: Firewall | None,
    *,
    image_arrives: bool = False,
) -> Preflight:
    """The refusal sequence every deploy (and every host of a rollout) goes through before it
    changes anything: a deploy here that did not finish, a deploy marked on the engine (from
    another checkout), then the :func:`preflight`. Raises :class:`PreflightError`."""
    refuse_unfinished(cfg.state_dir)
    # Read first, so that the message names that deploy; a deploy claims the mark
    # (atomically) only once the preflight has passed.
    held = await docker.read_marker(marker_name(cfg.service.name))
    if held is not None:
        raise refuse_marked(held, cfg.service.name)
    return await preflight(cfg, docker, http, release, firewall, image_arrives=image_arrives)
