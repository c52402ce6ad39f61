"""One deploy: check the input, open the engine and HTTP session, run the plan."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from ._config import Config, read_env_file, read_version
from ._context import DeployContext
from ._engine import DockerEngine, Engine
from ._errors import ConfigError, PreflightError
from ._logging import register_secrets
from ._saga import SagaState, Step, StepRecord, run_saga
from ._state import Journal, service_lock


def default_plan(cfg: Config) -> list[Step[DeployContext]]:
    """The reference blue-green plan, in order; a plain list to edit or extend."""
    # Imported here: the steps package imports this one.
    from steps import (
        AwaitGreenHealthy,
        AwaitTickBoundary,
        BuildImage,
        RemoveOld,
        RunMigrations,
        StartGreen,
        Switch,
        VerifyProduction,
    )

    plan: list[Step[DeployContext]] = []
    if cfg.build.enabled:
        plan.append(BuildImage(cfg.build))
    if cfg.migrate.commands:
        plan.append(RunMigrations(cfg.migrate, cfg.service))
    plan += [
        StartGreen(cfg.service, cfg.green),
        AwaitGreenHealthy(cfg.service, cfg.health),
        AwaitTickBoundary(cfg.service, cfg.tick, cfg.health),
        Switch(cfg.service, cfg.tick, cfg.health, cfg.verify),
        VerifyProduction(cfg.service, cfg.health, cfg.verify),
        RemoveOld(cfg.service),
    ]
    return plan


@dataclass(frozen=True)
class Release:
    """What is being deployed, read from the files the config names."""

    version: str
    image: str
    env: Mapping[str, str] = field(repr=False)


def prepare(cfg: Config, environ: Mapping[str, str] | None = None) -> Release:
    """Read and check every file the config names; touches nothing."""
    version = read_version(cfg.image)
    env: dict[str, str] = {}
    if cfg.service.env_file is not None:
        env.update(read_env_file(cfg.service.env_file, environ))
    env.update(cfg.env)
    register_secrets([*env.values(), *cfg.green.env.values()])
    if cfg.build.enabled and cfg.build.context is not None:
        if not cfg.build.context.is_dir():
            raise ConfigError("not a directory", source=str(cfg.build.context), key="build.context")
        if not (cfg.build.context / cfg.build.dockerfile).is_file():
            raise ConfigError(
                f"no {cfg.build.dockerfile} in the build context",
                source=str(cfg.build.context),
                key="build.dockerfile",
            )
    return Release(version=version, image=cfg.image.name.format(version=version), env=env)


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
    # A fresh connection per probe: availability is what we measure.
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), trust_env=False)


async def deploy(
    cfg: Config,
    *,
    steps: Sequence[Step[DeployContext]] | None = None,
    engine: Engine | None = None,
    environ: Mapping[str, str] | None = None,
    state: SagaState | None = None,
) -> DeployResult:
    """Deploy the release ``cfg`` describes with ``steps`` (default: :func:`default_plan`).

    Holds the service's lock throughout and keeps a journal for ``recover``.
    Raises a :class:`~rolling_update.RollingUpdateError` when the deploy fails;
    by then every started step was compensated. ``state``, if given, is kept
    up to date with the runner's progress (the CLI reads it after an interrupt).
    """
    deploy_id = uuid.uuid4().hex[:12]
    log = structlog.get_logger()
    with structlog.contextvars.bound_contextvars(deploy_id=deploy_id):
        release = prepare(cfg, environ)
        began = time.monotonic()
        state_dir, service = cfg.state.dir, cfg.service.name
        with service_lock(state_dir, service, purpose="deploy", deploy_id=deploy_id):
            unfinished = Journal.load(Journal.path_for(state_dir, service))
            if unfinished is not None:
                raise PreflightError(
                    f"an unfinished {unfinished.describe()} was interrupted; "
                    "run `rolling-update recover` first"
                )
            async with open_engine(engine) as docker, http_session() as http:
                if not cfg.build.enabled and not await docker.image_exists(release.image):
                    raise PreflightError(
                        f"image {release.image} does not exist and build is disabled"
                    )
                journal = Journal.begin(
                    state_dir,
                    deploy_id=deploy_id,
                    service=service,
                    image=release.image,
                    version=release.version,
                )
                ctx = DeployContext(
                    config=cfg,
                    engine=docker,
                    http=http,
                    deploy_id=deploy_id,
                    version=release.version,
                    image=release.image,
                    env=dict(release.env),
                    journal=journal,
                )
                plan = list(steps) if steps is not None else default_plan(cfg)
                log.info(
                    "deploy.started",
                    image=release.image,
                    version=release.version,
                    service=service,
                    steps=[s.name for s in plan],
                )
                progress = state if state is not None else SagaState()
                progress.on_progress = lambda p: journal.update(
                    step=p.current, committed=p.committed
                )
                try:
                    records = await run_saga(
                        plan, ctx, compensate_limit=cfg.rollback.step_timeout, state=progress
                    )
                except BaseException:
                    # What was measured (the outage of a failed switch, memory) is
                    # worth as much on failure as on success.
                    log.warning(
                        "deploy.failed",
                        image=release.image,
                        measured=ctx.measured,
                        seconds=round(time.monotonic() - began, 3),
                    )
                    if not progress.failures:
                        # Rolled back cleanly: nothing is left to recover.
                        journal.remove()
                    raise
                journal.remove()
        seconds = time.monotonic() - began
        log.info(
            "deploy.done",
            image=release.image,
            seconds=round(seconds, 3),
            measured=ctx.measured,
            health=ctx.final_health,
        )
        return DeployResult(
            deploy_id=deploy_id,
            version=release.version,
            image=release.image,
            steps=records,
            measured={**ctx.measured, "total_s": round(seconds, 3)},
            health=ctx.final_health,
        )
