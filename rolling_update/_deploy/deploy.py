"""One deploy: check the input, open the engine and HTTP session, run the plan."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import structlog

from rolling_update._config.settings import Config
from rolling_update._deploy.context import DeployContext
from rolling_update._deploy.guard import ConfirmBlue
from rolling_update._deploy.hooks import run_pre_hook
from rolling_update._deploy.judge import judge
from rolling_update._deploy.plan import PlanFactory, default_plan
from rolling_update._deploy.preflight import (
    already_serving,
    refuse_or_preflight,
    version_of,
)
from rolling_update._deploy.record import record_end, record_timeline
from rolling_update._deploy.records import Verified, check_plan
from rolling_update._deploy.release import prepare
from rolling_update._deploy.saga import (
    SagaState,
    Step,
    StepRecord,
    again_while_away,
    run_saga,
)
from rolling_update._deploy.session import open_engine, open_http
from rolling_update._engine.model import LABEL_DEPLOY, Engine
from rolling_update._errors import (
    EngineError,
    EngineUnavailable,
    FailedAfterCommit,
    PreflightError,
)
from rolling_update._handoff.measure import measure_handoff
from rolling_update._handoff.nft import Firewall, LocalFirewall
from rolling_update._observe import measures
from rolling_update._observe.history import Attempt, Kind
from rolling_update._observe.logs import redactor
from rolling_update._state.journal import Journal
from rolling_update._state.lock import service_lock
from rolling_update._state.mark import MARK_LIMIT, marker_labels, marker_name, refuse_marked
from rolling_update._watch.tasks import task_group


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
    http: aiohttp.ClientSession | None = None,
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
    production already runs is refused (exit 2) unless ``force``. ``http`` is the
    client that probes the service (default: the tool's own, opened here).
    """
    attempt = Attempt(id=uuid.uuid4().hex[:12], kind=kind)
    progress = state if state is not None else SagaState()
    began = time.monotonic()
    error: BaseException | None = None
    try:
        with structlog.contextvars.bound_contextvars(
            deploy_id=attempt.id, service=cfg.service.name
        ):
            chosen = list(steps) if steps is not None else list(plan(cfg))
            check_plan(guarded(cfg, chosen))
            return await _deploy(
                cfg,
                chosen,
                engine,
                environ,
                progress,
                version,
                attempt,
                firewall or LocalFirewall(),
                force=force or kind != "deploy",
                given_http=http,
            )
    except BaseException as exc:
        error = exc
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await record_end(cfg, attempt, judge(error, progress), error, time.monotonic() - began)


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
    given_http: aiohttp.ClientSession | None,
) -> DeployResult:
    deploy_id = attempt.id
    log = structlog.get_logger()
    release = prepare(cfg, environ, version=version)
    attempt.to_version = release.version
    began = time.monotonic()
    service = cfg.service.name
    with service_lock(cfg.state_dir, service, purpose="deploy", deploy_id=deploy_id):
        async with open_engine(engine, cfg.engine) as docker, open_http(given_http) as http:
            found = await refuse_or_preflight(cfg, docker, http, release, firewall)
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
            settled = succeeded = False
            journal: Journal | None = None
            try:
                journal = Journal.begin(
                    cfg.state_dir,
                    deploy_id=deploy_id,
                    service=service,
                    image=release.image,
                    version=release.version,
                )
                journal.forgiving = lambda: progress.rolling_back
                journal.update(blue_health=found.blue_health)
                ctx = DeployContext(
                    config=cfg,
                    engine=docker,
                    http=http,
                    deploy_id=deploy_id,
                    release=release,
                    found=found,
                    journal=journal,
                    measured=attempt.measured,
                    firewall=firewall,
                )
                plan = guarded(cfg, steps)
                log.info(
                    "deploy.started",
                    image=release.image,
                    version=release.version,
                    service=service,
                    steps=[s.name for s in plan],
                )
                written = journal
                progress.on_progress = lambda p: written.update(
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
                    record_timeline(attempt, progress, ctx, began)
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
                record_timeline(attempt, progress, ctx, began)
                settled = succeeded = True
            finally:
                # No step begun (the journal could not be written): nothing to recover.
                if settled or progress.current is None:
                    left = None
                    with anyio.move_on_after(MARK_LIMIT, shield=True) as scope:
                        try:
                            # The mark first: when the engine fails its removal (it is
                            # going down), the journal is left for `recover` to read.
                            # Asked again while it is away (a restart), within the limit.
                            await again_while_away(
                                lambda: docker.remove_marker(marker_name(service)),
                                event="deploy.mark.again",
                                ends=anyio.current_time() + MARK_LIMIT,
                            )
                        except EngineError as exc:
                            left = str(exc)
                        else:
                            if journal is not None:
                                journal.remove()
                    if left is not None or scope.cancelled_caught:
                        error = left or f"no answer within {MARK_LIMIT:g}s"
                        log.warning(
                            "deploy.mark_left",
                            mark=marker_name(service),
                            error=error,
                            consequence="the journal is kept, and the next deploy refuses "
                            "until `rolling-update recover` finishes this one",
                        )
                        if succeeded:
                            # The new version serves, but the host is not left as a
                            # finished deploy leaves it: exit 4, `recover` finishes.
                            raise FailedAfterCommit(EngineUnavailable(error), "the mark's removal")
    seconds = time.monotonic() - began
    verified = ctx.find(Verified)
    final_health = None if verified is None else verified.health
    log.info(
        "deploy.done",
        image=release.image,
        seconds=round(seconds, 3),
        measured=ctx.measured,
        health=redactor.scrub(final_health),
    )
    return DeployResult(
        deploy_id=deploy_id,
        version=release.version,
        image=release.image,
        steps=records,
        measured={**ctx.measured, measures.TOTAL: round(seconds, 3)},
        health=final_health,
    )
