"""One service across several Docker hosts, or several replicas: canary first, then
``parallel`` hosts at a time (replicas: one at a time).

Every host runs the whole single-host deploy (its own lock, journal, engine
mark, twin, drain, tick, handoff or restart, verify, soak). The image is built
once, on the canary's engine, and streamed into each other engine (``docker
save`` into ``docker load``, through the API; no registry needed).
Migrations run once, in the canary's plan, before any switch (unless
``rollout.migrate = "per-host"``). A replica is a unit exactly like a host
(on the same engine, so nothing is copied to it); ``[[hosts]]`` with replicas
make each host's replicas units, host after host. A unit that fails rolls itself back and the
rollout stops; ``on_failure = "rollback-all"`` then deploys each updated
host's previous version again (same safe flow, newest host first).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, aclosing
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import anyio
import structlog

from rolling_update._config.settings import Config
from rolling_update._deploy.deploy import deploy
from rolling_update._deploy.judge import judge
from rolling_update._deploy.outcome import HostOutcome, Outcome
from rolling_update._deploy.plan import PlanFactory, default_plan
from rolling_update._deploy.preflight import already_serving, refuse_or_preflight, version_of
from rolling_update._deploy.release import Release, prepare
from rolling_update._deploy.saga import SagaState
from rolling_update._deploy.session import open_http
from rolling_update._engine.model import Engine
from rolling_update._engine.registry import registry_auth
from rolling_update._errors import EngineError, PreflightError, RolloutFailed
from rolling_update._hosts.hosts import Connected, connect, image_source, units_of
from rolling_update._observe.logs import redactor
from rolling_update._observe.progress import waiting
from rolling_update._operate.rollback import rollback
from rolling_update._state.lock import service_lock

_PROGRESS_EVERY = 2.0


@dataclass
class RolloutResult:
    version: str
    image: str
    outcomes: list[HostOutcome]
    seconds: float


def summary(outcomes: list[HostOutcome]) -> str:
    return ", ".join(f"{o.host}: {o.result}" for o in outcomes)


async def copy_image(
    source: Engine,
    target: Engine,
    image: str,
    *,
    host: str,
    auth: str | None = None,
) -> dict[str, Any]:
    """Get ``image`` onto ``target`` as ``source`` (the canary) has it, and check that it
    is the same image (id) after.

    Nothing is copied when ``target`` has it already. With ``auth`` (the image was
    pushed) ``target`` pulls it from the registry; without, it is streamed from
    ``source`` (save into load), with progress.
    """
    log = structlog.get_logger()
    wanted = await source.image_id(image)
    if wanted is None:
        raise EngineError("image save", image, 404, "the built image is not on the canary")
    if await target.image_id(image) == wanted:
        log.info("image.present", host=host, image=image)
        return {"copied_bytes": 0} if auth is None else {"pulled": False}
    began = time.monotonic()
    if auth is None:
        log.info("image.copy", host=host, image=image, via="save/load")
        sent = await _stream(source, target, image, host=host)
    else:
        log.info("image.pull", host=host, image=image)
        await target.pull_image(
            image,
            auth=auth,
            on_status=lambda line: log.debug("image.pull.status", host=host, line=line),
        )
    if await target.image_id(image) != wanted:
        raise EngineError("image copy", image, 0, f"{host} has another {image} than the canary")
    seconds = round(time.monotonic() - began, 3)
    if auth is not None:
        log.info("image.pulled", host=host, image=image, seconds=seconds)
        return {"pulled": True, "pull_s": seconds}
    log.info("image.copied", host=host, image=image, mb=round(sent / 2**20, 1), seconds=seconds)
    return {"copied_bytes": sent, "copy_s": seconds}


async def _stream(source: Engine, target: Engine, image: str, *, host: str) -> int:
    """``docker save`` on ``source`` into ``docker load`` on ``target``; the bytes sent."""
    log = structlog.get_logger()
    began = last = time.monotonic()
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent, last
        async with aclosing(source.export_image(image)) as stream:
            async for chunk in stream:
                sent += len(chunk)
                now = time.monotonic()
                if now - last >= _PROGRESS_EVERY:
                    last = now
                    log.info(
                        "image.copying",
                        host=host,
                        image=image,
                        mb=round(sent / 2**20, 1),
                        mb_per_s=round(sent / 2**20 / (now - began), 1),
                    )
                yield chunk

    await target.load_image(chunks())
    return sent


async def check_all(
    connected: list[Connected], release: Release, http: aiohttp.ClientSession | None = None
) -> None:
    """Every host's preflight before the canary changes anything: an unfinished deploy, a
    deploy marked on its engine, a container in the way, a port taken, a twin that cannot
    run. Raises :class:`PreflightError` naming the host (nothing was changed)."""
    async with open_http(http) as http:
        for i, host in enumerate(connected):
            try:
                await refuse_or_preflight(
                    host.config, host.engine, http, release, host.firewall, image_arrives=i > 0
                )
            except PreflightError as exc:
                raise PreflightError(f"{host.unit.label}: {exc}") from exc


async def rollout(
    cfg: Config,
    *,
    environ: Mapping[str, str] | None = None,
    progress: dict[str, SagaState] | None = None,
    report: list[HostOutcome] | None = None,
    force: bool = False,
    plan: PlanFactory = default_plan,
    engines: Mapping[str, Engine] | None = None,
    http: aiohttp.ClientSession | None = None,
) -> RolloutResult:
    """Deploy ``cfg``'s release to every host in ``cfg.hosts``, canary first.

    Raises :class:`RolloutFailed` when a host failed (every host then serves,
    as ``on_failure`` says); a cancellation (Ctrl-C) rolls back the hosts in
    flight, applies ``on_failure`` to the rest, and propagates. ``report``, if
    given, receives every host's outcome however the rollout ends. ``plan`` makes
    each host's steps from that host's config, and its rollback's under rollback-all.
    ``engines``, if given, holds an open engine for every host, by name, used instead of
    reaching its address (:func:`connect`); ``http`` is the client that probes every host
    (default: the tool's own).
    """
    log = structlog.get_logger()
    began = time.monotonic()
    release = prepare(cfg, environ)
    units = units_of(cfg)
    if engines is not None:
        missing = sorted({u.host.name for u in units if u.host.name not in engines})
        if missing:
            raise ValueError(f"no engine given for host {', '.join(missing)}")
    # Replicas go strictly one at a time: the next only after the previous one soaked,
    # so no more than one replica of a host is ever between two versions.
    parallel = 1 if cfg.service.replicated else cfg.rollout.parallel
    outcomes = {u.name: HostOutcome(host=u.name, to_version=release.version) for u in units}
    states = progress if progress is not None else {}
    stopped = False
    sources = {u.name: image_source(units, u) for u in units}
    registry = cfg.rollout.distribute == "registry"
    if registry and not any(sources.values()):
        registry = False
        log.info(
            "image.push.skipped",
            image=release.image,
            why="every unit runs on the engine that builds the image",
        )
    auth = registry_auth(release.image, environ) if registry else ""
    pushed = anyio.Lock()
    push_done = False

    async def push(source: Connected) -> None:
        nonlocal push_done
        async with pushed:
            if push_done:
                return
            began = time.monotonic()
            log.info("image.push", image=release.image, host=source.name)
            await source.engine.push_image(
                release.image,
                auth=auth,
                on_status=lambda line: log.debug("image.push.status", line=line),
            )
            log.info(
                "image.pushed", image=release.image, seconds=round(time.monotonic() - began, 3)
            )
            push_done = True

    async def one(connected: Connected, source: Connected | None) -> None:
        nonlocal stopped
        name = connected.name
        outcome = outcomes[name]
        state = states.setdefault(name, SagaState())
        started = time.monotonic()
        error: BaseException | None = None
        try:
            with structlog.contextvars.bound_contextvars(host=name):
                outcome.from_version = version_of(productions[name])
                if name in current:
                    outcome.reason = f"already runs {release.version}: left as it is"
                    return
                if source is not None:
                    with (
                        anyio.fail_after(cfg.rollout.distribute_timeout),
                        waiting(f"image copy to {name}", cfg.rollout.distribute_timeout),
                    ):
                        if registry:
                            await push(source)
                        copied = await copy_image(
                            source.engine,
                            connected.engine,
                            release.image,
                            host=name,
                            auth=auth if registry else None,
                        )
                        outcome.measured.update(copied)
                result = await deploy(
                    connected.config,
                    engine=connected.engine,
                    firewall=connected.firewall,
                    environ=environ,
                    state=state,
                    force=force,
                    plan=plan,
                    http=http,
                )
                outcome.measured.update(result.measured)
        except BaseException as exc:
            error = exc
            stopped = True
            if isinstance(exc, Exception):
                return  # recorded below; the rollout goes on to its end and reports
            raise
        finally:
            outcome.seconds = round(time.monotonic() - started, 3)
            outcome.result = judge(error, state)
            if error is not None:
                outcome.reason = redactor.scrub(str(error) or type(error).__name__)
            log.info("rollout.host", host=name, result=outcome.result, reason=outcome.reason)

    async with AsyncExitStack() as stack:
        # One rollout of the service at a time, from this machine: a second one would
        # find the canary done and race the first on the hosts after it.
        stack.enter_context(
            service_lock(cfg.state_dir, cfg.service.name, purpose="rollout", deploy_id="-")
        )
        # Every host is reached before anything changes: an unreachable one refuses the
        # rollout with nothing touched.
        connected = [
            await stack.enter_async_context(
                connect(
                    cfg,
                    unit,
                    image=release.image,
                    engine=None if engines is None else engines[unit.host.name],
                )
            )
            for unit in units
        ]
        await check_all(connected, release, http)
        # A rollout that stopped part-way is finished by running it again: a unit whose
        # production already runs this version is left as it is (its engine has the image,
        # so it can still be the canary others copy from). When every unit runs it, each
        # refuses, as a deploy of what production runs does; --force deploys them all.
        # Read once, before anything changes: what each unit runs is also what
        # rollback-all brings it back to.
        productions = {c.name: await c.engine.inspect(c.config.service.name) for c in connected}
        serving = {n for n, p in productions.items() if already_serving(p, release.version)}
        current: set[str] = serving if not force and len(serving) < len(connected) else set()
        log.info(
            "rollout.started",
            version=release.version,
            hosts=[u.name for u in units],
            parallel=parallel,
            on_failure=cfg.rollout.on_failure,
        )
        canary = connected[0]
        try:
            await one(canary, None)
            if not stopped:
                limiter = anyio.Semaphore(parallel)
                async with anyio.create_task_group() as tg:
                    for host in connected[1:]:
                        await limiter.acquire()
                        if stopped:
                            limiter.release()
                            break

                        async def run(host: Connected = host) -> None:
                            source = canary if sources[host.name] else None
                            try:
                                await one(host, source)
                            finally:
                                limiter.release()

                        tg.start_soon(run)
        finally:
            failed = any(
                o.result not in (Outcome.DEPLOYED, Outcome.NOT_STARTED) for o in outcomes.values()
            )
            if failed and cfg.rollout.on_failure == "rollback-all":
                with anyio.CancelScope(shield=True):
                    await _revert(cfg, connected, outcomes, plan, http)
            log.info("rollout.summary", hosts=[asdict(o) for o in outcomes.values()])
            if report is not None:
                report[:] = [outcomes[u.name] for u in units]
    ordered = [outcomes[u.name] for u in units]
    if any(o.result != Outcome.DEPLOYED for o in ordered):
        raise RolloutFailed(f"the rollout stopped ({summary(ordered)})", ordered)
    return RolloutResult(
        version=release.version,
        image=release.image,
        outcomes=ordered,
        seconds=round(time.monotonic() - began, 3),
    )


async def _revert(
    cfg: Config,
    connected: list[Connected],
    outcomes: dict[str, HostOutcome],
    plan: PlanFactory,
    http: aiohttp.ClientSession | None,
) -> None:
    """rollback-all: the hosts that took the new version get their previous one back."""
    log = structlog.get_logger()
    for host in reversed(connected):
        outcome = outcomes[host.name]
        if outcome.result != Outcome.DEPLOYED:
            continue
        if outcome.from_version is None or outcome.from_version == outcome.to_version:
            outcome.reason = "kept: there was no other version before"
            continue
        log.info("rollout.revert", host=host.name, to=outcome.from_version)
        try:
            with (
                structlog.contextvars.bound_contextvars(host=host.name),
                anyio.fail_after(cfg.rollout.revert_timeout),
            ):
                await rollback(
                    host.config,
                    outcome.from_version,
                    engine=host.engine,
                    firewall=host.firewall,
                    plan=plan,
                    http=http,
                )
        except Exception as exc:
            outcome.result = Outcome.REVERT_FAILED
            outcome.reason = redactor.scrub(str(exc) or type(exc).__name__)
            continue
        outcome.result = Outcome.REVERTED
