"""The saga runner: steps in order; on failure or cancellation, undo in reverse.

A step is anything with ``name``, ``title``, ``run(ctx)`` and
``compensate(ctx)`` (:class:`Step`); no base class is needed. The runner
records a step as started *before* awaiting ``run()``, so a step that fails
half-way is compensated too; compensations must therefore be idempotent and
treat "nothing to undo" as success.

A step whose ``pivot`` attribute is true is the point of no return: once it
has succeeded, the steps before it are no longer undone (the new version was
verified; a failure after that must not roll back a healthy deploy).

An undo that fails because the engine does not answer (:class:`EngineUnavailable`)
is tried again while its budget lasts: undos are idempotent, and an engine that
hung for a while answers a later try.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import anyio
import structlog

from rolling_update._errors import (
    EngineError,
    EngineUnavailable,
    FailedAfterCommit,
    RollbackIncomplete,
)
from rolling_update._observe.logs import redactor
from rolling_update._observe.timeline import Phase

Ctx = TypeVar("Ctx", contravariant=True)


class Step(Protocol[Ctx]):
    """The shape of a step; a plain class with these members is one."""

    name: str
    title: str

    async def run(self, ctx: Ctx) -> None: ...

    async def compensate(self, ctx: Ctx) -> None: ...


class SagaState:
    """What the runner has done so far, readable after an interrupt.

    ``current`` is set before a step's ``run()``, ``committed`` once a pivot
    step has succeeded; ``on_progress`` (the deploy journal) is called after
    each of those changes, before the step acts. ``failures`` names
    compensations that did not finish.
    """

    def __init__(self, on_progress: Callable[[SagaState], None] | None = None) -> None:
        self.current: str | None = None
        self.committed = False
        self.finished = False
        self.failures: list[tuple[str, str]] = []
        self.engine_unanswered = False
        """Whether an undo failed because the Docker engine did not answer."""
        self.rolling_back = False
        """Whether the undos have begun."""
        self.on_progress = on_progress
        self.phases: list[Phase] = []
        """Every step run and every undo, with its monotonic start and end (the timeline)."""

    def begin(self, step: str) -> None:
        self.current = step
        if self.on_progress is not None:
            self.on_progress(self)

    def commit(self) -> None:
        """The pivot passed; committed once that is recorded. A record that cannot be
        written (a full disk) leaves the deploy uncommitted, as the journal on disk still
        says: it rolls back as before the pivot, and `recover` after a death agrees."""
        self.committed = True
        if self.on_progress is not None:
            try:
                self.on_progress(self)
            except Exception:
                self.committed = False
                raise


@dataclass(frozen=True)
class StepRecord:
    name: str
    seconds: float


C = TypeVar("C")


# Between tries of a call the engine did not answer: an engine that refuses connections
# fails each try at once.
_UNDO_RETRY_PAUSE = 0.5


async def run_saga(
    steps: Sequence[Step[C]],
    ctx: C,
    *,
    compensate_limit: float,
    rollback_limit: float | None = None,
    state: SagaState | None = None,
) -> list[StepRecord]:
    """Run ``steps`` in order with ``ctx``; return how long each took.

    On an exception or cancellation, every started step since the last pivot
    is compensated in reverse order, each shielded and bounded by
    ``compensate_limit`` seconds, all of them together by ``rollback_limit``;
    then the original exception propagates. When a compensation fails and the
    original was an ``Exception``, :class:`RollbackIncomplete` (caused by the
    original) is raised instead. An ``Exception`` after a pivot is raised as
    :class:`FailedAfterCommit`: nothing is rolled back then.
    """
    log = structlog.get_logger()
    state = state if state is not None else SagaState()
    started: list[Step[C]] = []
    records: list[StepRecord] = []
    total = len(steps)
    try:
        for index, step in enumerate(steps, start=1):
            with structlog.contextvars.bound_contextvars(step=step.name):
                log.info("deploy.step.started", index=index, total=total, title=step.title)
                state.begin(step.name)
                started.append(step)
                began = time.monotonic()
                phase = Phase(step.name, step.title, began)
                state.phases.append(phase)
                await step.run(ctx)
                phase.ended, phase.result = time.monotonic(), "done"
                seconds = phase.ended - began
                records.append(StepRecord(step.name, seconds))
                log.info(
                    "deploy.step.done",
                    index=index,
                    total=total,
                    title=step.title,
                    seconds=round(seconds, 3),
                )
                if getattr(step, "pivot", False):
                    state.commit()
                    started.clear()
    except BaseException as exc:
        last = state.phases[-1] if state.phases else None
        if last is not None and last.ended is None:
            last.ended = time.monotonic()
            last.result = "failed" if isinstance(exc, Exception) else "interrupted"
        failed = started[-1].name if started else state.current
        with structlog.contextvars.bound_contextvars(step=failed):
            if isinstance(exc, Exception):
                log.error(
                    "deploy.step.failed", error=redactor.scrub(str(exc) or type(exc).__name__)
                )
            else:
                log.warning("deploy.step.interrupted", reason=type(exc).__name__)
        state.rolling_back = True
        failures = await _unwind(started, ctx, compensate_limit, rollback_limit, state)
        state.failures = failures
        if state.committed and isinstance(exc, Exception):
            # Only the steps after the pivot were undone: the new version serves.
            raise FailedAfterCommit(exc, failed) from exc
        if failures:
            log.error("deploy.rollback.incomplete", failures=[f"{s}: {w}" for s, w in failures])
            if isinstance(exc, Exception):
                raise RollbackIncomplete(exc, failures) from exc
        elif started:
            log.info("deploy.rollback.done", undone=[s.name for s in reversed(started)])
        raise
    state.finished = True
    return records


# An engine restarting answers 500s while it shuts down ("database not open"), then
# nothing: an undo failing so is tried again, within its budget.
def engine_away(exc: BaseException | None) -> bool:
    """Whether a failure is the engine's passing state (unreachable, unanswered, or a 500
    while it restarts), not an answer to the request: an idempotent call failing so is
    worth trying again (also where the engine's failure is the cause: a remote handoff's
    helper that could not run)."""
    if exc is None:
        return False
    return (
        isinstance(exc, EngineUnavailable)
        or (isinstance(exc, EngineError) and exc.status >= 500)
        or engine_away(exc.__cause__)
    )


async def again_while_away(
    call: Callable[[], Awaitable[object]],
    *,
    event: str,
    ends: float | None = None,
    reserve: float = 0.0,
    tried: list[Exception] | None = None,
) -> None:
    """``call`` (idempotent), tried again for as long as it fails as an engine that is away
    does (:func:`engine_away`; each such failure logged as ``event`` and put in ``tried``).
    Bounded by the caller's budget; given ``ends`` (``anyio.current_time()``), the failure
    is raised instead once another try, with ``reserve`` s for it, would pass ``ends``, so
    the caller can say what it was."""
    while True:  # bounded by the caller's budget, or by ``ends``
        try:
            await call()
            return
        except Exception as exc:
            if not engine_away(exc):
                raise
            if ends is not None and anyio.current_time() + _UNDO_RETRY_PAUSE + reserve > ends:
                raise
            if tried is not None:
                tried.append(exc)
            structlog.get_logger().warning(event, error=redactor.scrub(str(exc)))
        await anyio.sleep(_UNDO_RETRY_PAUSE)


async def _undo(step: Step[C], ctx: C, unanswered: list[Exception]) -> None:
    """``step``'s undo (undos are idempotent), tried again while the engine is away."""
    await again_while_away(
        lambda: step.compensate(ctx), event="deploy.compensate.retry", tried=unanswered
    )


async def _unwind(
    started: list[Step[C]], ctx: C, limit: float, total: float | None, state: SagaState
) -> list[tuple[str, str]]:
    log = structlog.get_logger()
    phases = state.phases
    failures: list[tuple[str, str]] = []
    ends = None if total is None else anyio.current_time() + total
    for step in reversed(started):
        with structlog.contextvars.bound_contextvars(step=step.name):
            budget = limit if ends is None else min(limit, ends - anyio.current_time())
            if budget <= 0:
                assert total is not None
                failures.append((step.name, f"not undone: the rollback's {total:g}s had passed"))
                log.error("deploy.compensate.failed", error="rollback deadline passed")
                continue
            log.info("deploy.compensate.started", title=step.title)
            phase = Phase(f"undo {step.name}", step.title, time.monotonic())
            phases.append(phase)
            unanswered: list[Exception] = []
            with anyio.move_on_after(budget, shield=True) as scope:
                try:
                    await _undo(step, ctx, unanswered)
                except Exception as exc:
                    # One failed undo must not stop the others from running.
                    why = redactor.scrub(str(exc) or type(exc).__name__)
                    failures.append((step.name, why))
                    log.error("deploy.compensate.failed", error=why)
                    phase.ended, phase.result = time.monotonic(), "undo-failed"
                    continue
            phase.ended = time.monotonic()
            if scope.cancelled_caught:
                phase.result = "undo-failed"
                why = f"did not finish within {budget:g}s"
                if unanswered:
                    state.engine_unanswered |= any(
                        isinstance(exc, EngineUnavailable) for exc in unanswered
                    )
                    last = redactor.scrub(str(unanswered[-1]))
                    why = f"{last}, tried {len(unanswered)} time(s) within {budget:g}s"
                failures.append((step.name, why))
                log.error("deploy.compensate.failed", error=f"deadline of {budget:g}s passed")
            else:
                phase.result = "undone"
                log.info("deploy.compensate.done")
    return failures
