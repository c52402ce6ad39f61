"""``rollback [VERSION]``: a deploy of an image the host still has, without build or migrations."""

from __future__ import annotations

import aiohttp
import structlog

from rolling_update._config.settings import Config
from rolling_update._deploy.deploy import DeployResult, deploy
from rolling_update._deploy.plan import PlanFactory, default_plan
from rolling_update._deploy.preflight import version_of
from rolling_update._deploy.saga import SagaState
from rolling_update._deploy.session import open_engine
from rolling_update._engine.model import Engine
from rolling_update._errors import ConfigError, PreflightError
from rolling_update._handoff.nft import Firewall
from rolling_update._observe.history import HistoryEntry, read


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


def previous_version(history: list[HistoryEntry], current: str | None) -> str | None:
    """The version the newest run that committed ``current`` came from: a deploy that failed
    past its commit (then finished by ``recover``) took the host there as much as one that
    ended cleanly."""
    came = [e.from_version for e in history if e.result.committed and e.to_version == current]
    return next((v for v in reversed(came) if v), None)


async def rollback(
    cfg: Config,
    version: str | None,
    *,
    engine: Engine | None = None,
    state: SagaState | None = None,
    firewall: Firewall | None = None,
    plan: PlanFactory = default_plan,
    http: aiohttp.ClientSession | None = None,
) -> DeployResult:
    """Deploy ``version`` (default: the one before what serves) with ``plan``'s steps less its
    build and migrations; ``http`` as for :func:`deploy`."""
    log = structlog.get_logger()
    async with open_engine(engine, cfg.engine) as docker:
        known = await known_versions(cfg, docker)
        current = version_of(await docker.inspect(cfg.service.name))
    if version is None:
        version = previous_version(read(cfg.state_dir), current)
        if version is None:
            raise PreflightError(
                f"no previous version of {cfg.service.name} is recorded in its history; "
                f"name one: {', '.join(known) or 'no images found'}"
            )
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
        http=http,
    )
