"""One deploy: check the input, open the engine and HTTP session, run the plan."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import structlog

from rolling_update._config.settings import Config
from rolling_update._deploy.compose import environment_keys
from rolling_update._deploy.context import DeployContext
from rolling_update._deploy.guard import ConfirmBlue
from rolling_update._deploy.hooks import run_post_hook, run_pre_hook
from rolling_update._deploy.judge import judge
from rolling_update._deploy.outcome import Outcome
from rolling_update._deploy.plan import PlanFactory, default_plan
from rolling_update._deploy.policy import in_the_way
from rolling_update._deploy.release import Release, prepare
from rolling_update._deploy.saga import SagaState, Step, StepRecord, run_saga
from rolling_update._deploy.twin import Twin
from rolling_update._engine.builder import choose_builder
from rolling_update._engine.docker import DockerEngine
from rolling_update._engine.model import LABEL_DEPLOY, LABEL_VERSION, ContainerInfo, Engine
from rolling_update._errors import (
    PreflightError,
)
from rolling_update._handoff.measure import measure_handoff
from rolling_update._handoff.nft import Firewall, LocalFirewall, can_mark, marked_socket
from rolling_update._handoff.port import PortHandoff
from rolling_update._observe.history import Attempt, Kind
from rolling_update._observe.history import append as history_append
from rolling_update._observe.logs import redactor
from rolling_update._observe.metrics import write_metrics
from rolling_update._observe.timeline import build as build_timeline
from rolling_update._state.journal import Journal, refuse_unfinished
from rolling_update._state.lock import service_lock
from rolling_update._state.mark import MARK_LIMIT, marker_labels, marker_name, refuse_marked
from rolling_update._watch.probe import HealthBaseline, port_in_use, probe
from rolling_update._watch.watch import task_group


def guarded(cfg: Config, plan: Sequence[Step[DeployContext]]) -> list[Step[DeployContext]]:
    """``plan`` with :class:`ConfirmBlue` first: whatever the steps, a rollback ends by
    proving blue serves as healthy as it was found (its undo runs last)."""
    return [ConfirmBlue(cfg.service, cfg.health, cfg.verify), *plan]


@dataclass(frozen=True)
class DeployResult:
    deploy_id: str
    version: str
    image: str
    steps: list[StepRecord]
    measured: dict[str, Any]
    health: Any


@asynccontextmanager
async def open_engine(engine: Engine | None) -> AsyncIterator[Engine]:
    """The given engine, or a :class:`DockerEngine` opened (and closed) here."""
    if engine is not None:
        await engine.ping()
        yield engine
        return
    async with DockerEngine() as docker:
        yield docker


def http_session() -> aiohttp.ClientSession:
    """The tool's HTTP client: a fresh connection per probe (availability is what we
    measure), each socket marked, where it can be, so that the handoff's redirect lets the
    tool's own probes reach the real production port."""
    connector = aiohttp.TCPConnector(
        force_close=True, socket_factory=marked_socket if can_mark() else None
    )
    return aiohttp.ClientSession(connector=connector, trust_env=False)


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


@dataclass(frozen=True)
class Preflight:
    """What the checks before the first change found."""

    blue: ContainerInfo | None
    blue_health: HealthBaseline | None
    blue_raw: dict[str, Any] | None = None
    twin: Twin | None = None
    handoff: bool = False


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
    handoff = await _handoff_possible(cfg, twin, firewall or LocalFirewall())
    baseline = None
    if blue is not None and blue.running:
        answer = await probe(http, svc.url(svc.port, cfg.health.path), cfg.health)
        baseline = HealthBaseline.of(answer, cfg.health)
        log.info("preflight.blue_health", healthy=baseline.healthy, answer=baseline.found)
    return Preflight(blue=blue, blue_health=baseline, blue_raw=blue_raw, twin=twin, handoff=handoff)


async def _handoff_possible(cfg: Config, twin: Twin | None, firewall: Firewall) -> bool:
    """Whether switch.mode = handoff can be used; one log line saying why not, if not."""
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
    network = twin.network_mode if twin is not None else cfg.service.network
    why = (
        f"the service runs on network {network!r}, not the host network"
        if network != "host"
        else await firewall.unavailable()
    )
    if why is not None:
        structlog.get_logger().warning(
            "switch.mode", mode="restart", wanted="handoff", why=f"no kernel handoff: {why}"
        )
        return False
    return True


def moments(ctx: DeployContext) -> dict[str, float | None]:
    """What the timeline marks, from what the steps noted (monotonic times)."""
    measured = ctx.measured
    stopped = (
        ctx.switch_began + measured["blue_stop_s"]
        if ctx.switch_began is not None and "blue_stop_s" in measured
        else None
    )
    serving = (
        ctx.switch_began + measured["switch_s"]
        if ctx.switch_began is not None and "switch_s" in measured
        else None
    )
    return {
        "green started: two versions from here": ctx.green_started,
        "traffic moved to green (the handoff)": ctx.handoff_began,
        "blue stopped": stopped,
        "the new production container serves": serving,
        "traffic on the new production container": ctx.handoff_ended,
    }


async def deploy(
    cfg: Config,
    *,
    steps: Sequence[Step[DeployContext]] | None = None,
    plan: PlanFactory = default_plan,
    engine: Engine | None = None,
    environ: Mapping[str, str] | None = None,
    state: SagaState | None = None,
    version: str | None = None,
    kind: Kind = "deploy",
    firewall: Firewall | None = None,
    force: bool = False,
) -> DeployResult:
    """Deploy the release ``cfg`` describes with ``steps`` (default: ``plan(cfg)``, and
    ``plan`` defaults to :func:`default_plan`).

    Holds the service's lock throughout, marks the deploy on the engine, and
    keeps a journal for ``recover``. Raises a
    :class:`~rolling_update.RollingUpdateError` when the deploy fails; by
    then every started step was compensated. ``state``, if given, is kept up
    to date with the runner's progress (the CLI reads it after an interrupt).
    ``version`` deploys that version's existing image instead of reading the
    version file (``rollback``). Every run ends up in the audit log; the
    hooks and the metrics file follow it. ``firewall`` is where the handoff's
    redirect goes (default: this machine's nftables). A deploy of the version
    production already runs is refused (exit 2) unless ``force``.
    """
    attempt = Attempt(id=uuid.uuid4().hex[:12], kind=kind)
    progress = state if state is not None else SagaState()
    began = time.monotonic()
    error: BaseException | None = None
    try:
        with structlog.contextvars.bound_contextvars(
            deploy_id=attempt.id, service=cfg.service.name
        ):
            return await _deploy(
                cfg,
                list(steps) if steps is not None else list(plan(cfg)),
                engine,
                environ,
                progress,
                version,
                attempt,
                firewall or LocalFirewall(),
                force=force or kind != "deploy",
            )
    except BaseException as exc:
        error = exc
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await _after(cfg, attempt, judge(error, progress), error, time.monotonic() - began)


async def _after(
    cfg: Config, attempt: Attempt, result: Outcome, error: BaseException | None, seconds: float
) -> None:
    """Audit log, then hooks and metrics: none of them may change how the deploy ended."""
    log = structlog.get_logger()
    reason = None if error is None else str(error) or type(error).__name__
    entry = attempt.entry(cfg.service.name, result, reason=reason, seconds=seconds)
    try:
        history_append(cfg.state_dir, entry)
    except OSError as exc:
        log.warning("history.not_written", error=str(exc))
    if result is Outcome.REFUSED:
        return
    hook = (
        "post_deploy"
        if result in (Outcome.DEPLOYED, Outcome.FAILED_AFTER_COMMIT)
        else "post_rollback"
    )
    await run_post_hook(cfg, hook, entry)
    write_metrics(cfg)


def _timeline(attempt: Attempt, progress: SagaState, ctx: DeployContext, began: float) -> None:
    attempt.timeline = build_timeline(
        progress.phases, began, time.monotonic(), moments(ctx), ctx.measured
    )
    structlog.get_logger().info("deploy.timeline", timeline=attempt.timeline)


async def _deploy(
    cfg: Config,
    steps: Sequence[Step[DeployContext]],
    engine: Engine | None,
    environ: Mapping[str, str] | None,
    progress: SagaState,
    version: str | None,
    attempt: Attempt,
    firewall: Firewall,
    *,
    force: bool,
) -> DeployResult:
    deploy_id = attempt.id
    log = structlog.get_logger()
    release = prepare(cfg, environ, version=version)
    attempt.to_version = release.version
    began = time.monotonic()
    service = cfg.service.name
    with service_lock(cfg.state_dir, service, purpose="deploy", deploy_id=deploy_id):
        refuse_unfinished(cfg.state_dir)
        async with open_engine(engine) as docker, http_session() as http:
            # The engine-side mark: a deploy from another checkout (another
            # state directory) of the same service on this engine sees it.
            # Read first, so that the message names that deploy; claimed
            # (atomically) once the preflight has passed.
            held_before = await docker.read_marker(marker_name(service))
            if held_before is not None:
                raise refuse_marked(held_before, service)
            found = await preflight(cfg, docker, http, release, firewall)
            attempt.from_version = version_of(found.blue)
            same = already_serving(found.blue, release.version)
            if same is not None and not force:
                raise PreflightError(f"{same}; `deploy --force` deploys it again")
            hook_env = {"RU_FROM_VERSION": attempt.from_version or ""}
            if cfg.build.enabled and version is None:
                await run_pre_hook(cfg, "pre_build", attempt.id, release, hook_env)
            await run_pre_hook(cfg, "pre_deploy", attempt.id, release, hook_env)
            labels = marker_labels(
                service=service,
                deploy_id=deploy_id,
                image=release.image,
                version=release.version,
            )
            held = await docker.claim_marker(marker_name(service), labels)
            if held.get(LABEL_DEPLOY) != deploy_id:
                raise refuse_marked(held, service)
            settled = False
            try:
                journal = Journal.begin(
                    cfg.state_dir,
                    deploy_id=deploy_id,
                    service=service,
                    image=release.image,
                    version=release.version,
                )
                journal.update(blue_health=found.blue_health)
                ctx = DeployContext(
                    config=cfg,
                    engine=docker,
                    http=http,
                    deploy_id=deploy_id,
                    version=release.version,
                    image=release.image,
                    env=dict(release.env),
                    journal=journal,
                    blue_health=found.blue_health,
                    measured=attempt.measured,
                    twin=found.twin,
                    blue_raw=found.blue_raw,
                    handoff=found.handoff,
                    firewall=firewall,
                    blue_serving=found.blue.id if found.blue and found.blue.running else None,
                )
                plan = guarded(cfg, steps)
                log.info(
                    "deploy.started",
                    image=release.image,
                    version=release.version,
                    service=service,
                    steps=[s.name for s in plan],
                )
                progress.on_progress = lambda p: journal.update(
                    step=p.current, committed=p.committed
                )
                try:
                    async with task_group() as tg:
                        if ctx.handoff:
                            # Imported here: the steps package imports this one.
                            tg.start_soon(measure_handoff, ctx)
                        records = await run_saga(
                            plan,
                            ctx,
                            compensate_limit=cfg.rollback.step_timeout,
                            rollback_limit=cfg.rollback.timeout,
                            state=progress,
                        )
                        tg.cancel_scope.cancel()
                except BaseException as exc:
                    _timeline(attempt, progress, ctx, began)
                    # What was measured (the outage of a failed switch, memory) is
                    # worth as much on failure as on success.
                    log.warning(
                        "deploy.failed",
                        image=release.image,
                        measured=ctx.measured,
                        seconds=round(time.monotonic() - began, 3),
                    )
                    # Rolled back cleanly, or interrupted after the commit (the
                    # shielded cleanup finished): nothing is left to recover. A
                    # failed undo, or a step failing after the commit, leaves the
                    # journal and the mark for `recover`.
                    after_commit_failure = progress.committed and isinstance(exc, Exception)
                    settled = not progress.failures and not after_commit_failure
                    raise
                _timeline(attempt, progress, ctx, began)
                settled = True
            finally:
                if settled:
                    with anyio.move_on_after(MARK_LIMIT, shield=True):
                        journal.remove()
                        await docker.remove_marker(marker_name(service))
    seconds = time.monotonic() - began
    log.info(
        "deploy.done",
        image=release.image,
        seconds=round(seconds, 3),
        measured=ctx.measured,
        health=redactor.scrub(ctx.final_health),
    )
    return DeployResult(
        deploy_id=deploy_id,
        version=release.version,
        image=release.image,
        steps=records,
        measured={**ctx.measured, "total_s": round(seconds, 3)},
        health=ctx.final_health,
    )
