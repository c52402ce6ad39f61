"""The saga runner, with fake steps: order, compensation, cancellation, pivots."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import pytest

from rolling_update import (
    EngineError,
    EngineUnavailable,
    FailedAfterCommit,
    HandoffError,
    RollbackIncomplete,
    RollingUpdateError,
    run_saga,
)
from rolling_update._deploy.saga import SagaState

pytestmark = pytest.mark.anyio


@dataclass
class Journal:
    entries: list[str] = field(default_factory=list)


class Boom(RollingUpdateError):
    pass


class FakeStep:
    def __init__(
        self,
        name: str,
        *,
        fail: bool = False,
        fail_undo: bool = False,
        hang: bool = False,
        hang_undo: bool = False,
        pivot: bool = False,
    ) -> None:
        self.name = name
        self.title = f"step {name}"
        self.fail, self.fail_undo, self.hang, self.hang_undo = fail, fail_undo, hang, hang_undo
        self.pivot = pivot

    async def run(self, ctx: Journal) -> None:
        ctx.entries.append(f"run {self.name}")
        if self.hang:
            await anyio.sleep_forever()
        if self.fail:
            raise Boom(f"{self.name} failed")

    async def compensate(self, ctx: Journal) -> None:
        if self.hang_undo:
            await anyio.sleep_forever()
        ctx.entries.append(f"undo {self.name}")
        if self.fail_undo:
            raise RuntimeError(f"undo of {self.name} failed")


async def test_all_steps_run_in_order_and_nothing_is_undone() -> None:
    """A successful saga runs every step once, in order, and compensates none."""
    journal = Journal()
    records = await run_saga(
        [FakeStep("a"), FakeStep("b"), FakeStep("c")], journal, compensate_limit=1
    )
    assert journal.entries == ["run a", "run b", "run c"]
    assert [r.name for r in records] == ["a", "b", "c"]


@pytest.mark.parametrize("failing", range(4))
async def test_failure_at_any_position_undoes_started_steps_in_reverse(failing: int) -> None:
    """A step failing at position N compensates steps N..1 (itself included) in reverse."""
    names = ["a", "b", "c", "d"]
    steps = [FakeStep(n, fail=i == failing) for i, n in enumerate(names)]
    journal = Journal()
    with pytest.raises(Boom, match=f"{names[failing]} failed"):
        await run_saga(steps, journal, compensate_limit=1)
    ran = [f"run {n}" for n in names[: failing + 1]]
    undone = [f"undo {n}" for n in reversed(names[: failing + 1])]
    assert journal.entries == ran + undone


async def test_failing_compensation_is_reported_and_the_others_still_run() -> None:
    """A raising undo gives RollbackIncomplete (caused by the original); later undos still run."""
    steps = [FakeStep("a"), FakeStep("b", fail_undo=True), FakeStep("c", fail=True)]
    journal = Journal()
    with pytest.raises(RollbackIncomplete) as caught:
        await run_saga(steps, journal, compensate_limit=1)
    assert journal.entries == ["run a", "run b", "run c", "undo c", "undo b", "undo a"]
    assert isinstance(caught.value.cause, Boom)
    assert caught.value.__cause__ is caught.value.cause
    assert caught.value.failures == [("b", "undo of b failed")]


async def test_hanging_compensation_is_cut_at_its_deadline() -> None:
    """An undo that never returns is abandoned after compensate_limit and counted as failed."""
    steps = [FakeStep("a"), FakeStep("b", hang_undo=True), FakeStep("c", fail=True)]
    journal = Journal()
    with pytest.raises(RollbackIncomplete) as caught:
        await run_saga(steps, journal, compensate_limit=0.05)
    assert journal.entries[-2:] == ["undo c", "undo a"]
    assert caught.value.failures[0][0] == "b"


async def test_cancellation_mid_step_compensates_and_propagates() -> None:
    """Cancelling the runner during a step undoes the started steps, then re-raises the cancel."""
    steps = [FakeStep("a"), FakeStep("b", hang=True), FakeStep("c")]
    journal = Journal()
    with anyio.move_on_after(0.05) as scope:
        await run_saga(steps, journal, compensate_limit=1)
    assert scope.cancelled_caught
    assert journal.entries == ["run a", "run b", "undo b", "undo a"]


async def test_compensations_run_to_the_end_despite_cancellation() -> None:
    """Compensations are shielded: a cancel that arrives during an undo does not cut it short."""

    class SlowUndo(FakeStep):
        async def compensate(self, ctx: Journal) -> None:
            await anyio.sleep(0.1)
            await super().compensate(ctx)

    steps = [SlowUndo("a"), FakeStep("b", hang=True)]
    journal = Journal()
    with anyio.move_on_after(0.05):
        await run_saga(steps, journal, compensate_limit=1)
    assert journal.entries == ["run a", "run b", "undo b", "undo a"]


async def test_steps_before_a_pivot_are_not_undone() -> None:
    """After a pivot, a failure undoes only later steps and says so: FailedAfterCommit, not Boom."""
    steps = [FakeStep("a"), FakeStep("verify", pivot=True), FakeStep("c", fail=True)]
    journal = Journal()
    with pytest.raises(FailedAfterCommit) as caught:
        await run_saga(steps, journal, compensate_limit=1)
    assert journal.entries == ["run a", "run verify", "run c", "undo c"]
    assert isinstance(caught.value.cause, Boom) and caught.value.step == "c"


async def test_a_commit_that_cannot_be_recorded_rolls_everything_back() -> None:
    """When the record of the commit fails (a full disk), the deploy is not committed: every
    step, the pivot included, is undone and the write's error surfaces, not FailedAfterCommit."""

    def record(state: SagaState) -> None:
        if state.committed:
            raise Boom("cannot write the journal")

    steps = [FakeStep("a"), FakeStep("soak", pivot=True), FakeStep("c")]
    journal = Journal()
    state = SagaState(on_progress=record)
    with pytest.raises(Boom):
        await run_saga(steps, journal, compensate_limit=1, state=state)
    assert journal.entries == ["run a", "run soak", "undo soak", "undo a"]
    assert not state.committed


async def test_the_whole_rollback_is_bounded_by_its_own_deadline() -> None:
    """Three hanging undos with a 10 s step limit end within the 0.3 s rollback_limit, all named."""
    steps = [FakeStep(n, hang_undo=True) for n in "abc"] + [FakeStep("d", fail=True)]
    journal = Journal()
    with anyio.fail_after(5), pytest.raises(RollbackIncomplete) as caught:
        await run_saga(steps, journal, compensate_limit=10, rollback_limit=0.3)
    assert [step for step, _ in caught.value.failures] == ["c", "b", "a"]
    assert "not undone: the rollback's 0.3s had passed" in caught.value.failures[-1][1]


async def test_unexpected_exception_is_compensated_and_reraised_unchanged() -> None:
    """A bug (a non-RollingUpdateError) in a step still triggers the rollback and surfaces as is."""

    class Buggy(FakeStep):
        async def run(self, ctx: Journal) -> None:
            raise KeyError("oops")

    journal = Journal()
    with pytest.raises(KeyError):
        await run_saga([FakeStep("a"), Buggy("b")], journal, compensate_limit=1)
    assert journal.entries == ["run a", "undo b", "undo a"]


class FailingUndo(FakeStep):
    """A step whose undo fails with ``error`` its first ``times`` tries (forever: -1), as
    against an engine that does not answer or restarts; then it is undone."""

    def __init__(self, name: str, error: Exception, times: int) -> None:
        super().__init__(name)
        self.error, self.times, self.tries = error, times, 0

    async def compensate(self, ctx: Journal) -> None:
        self.tries += 1
        if self.times < 0 or self.tries <= self.times:
            raise self.error
        await super().compensate(ctx)


UNANSWERED = EngineUnavailable("the Docker engine did not answer docker rm x within 0s")


async def test_an_undo_the_engine_left_unanswered_is_tried_again() -> None:
    """An engine that answers again within the undo's budget gets the undo done: no failure."""
    steps = [FailingUndo("a", UNANSWERED, times=2), FakeStep("b", fail=True)]
    journal, state = Journal(), SagaState()
    with pytest.raises(Boom):
        await run_saga(steps, journal, compensate_limit=5, state=state)
    assert journal.entries == ["run a", "run b", "undo b", "undo a"]
    assert state.failures == [] and not state.engine_unanswered


async def test_an_engine_that_never_answers_fails_the_undo_by_its_budget() -> None:
    """Tried until its budget passes, the undo fails naming the engine; the next still runs."""
    steps = [FakeStep("a"), FailingUndo("b", UNANSWERED, times=-1), FakeStep("c", fail=True)]
    journal, state = Journal(), SagaState()
    with anyio.fail_after(5), pytest.raises(RollbackIncomplete) as caught:
        await run_saga(steps, journal, compensate_limit=1.2, state=state)
    assert journal.entries[-2:] == ["undo c", "undo a"]
    [(step, why)] = caught.value.failures
    assert step == "b" and "did not answer docker rm x" in why and "time(s) within 1.2s" in why
    assert state.engine_unanswered


def helper_failed(cause: EngineError) -> HandoffError:
    """A remote handoff's helper that could not run, the engine's failure as its cause."""
    error = HandoffError(f"the nft helper could not run: {cause}")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    "error",
    [
        EngineUnavailable("Docker engine unreachable: [Errno 2] No such file or directory"),
        EngineError("volume rm", "mark", 500, "database not open"),
        helper_failed(EngineError("start", "helper", 500, "transport is closing")),
    ],
    ids=["unreachable", "500", "helper-500"],
)
async def test_an_undo_failing_on_a_restarting_engine_is_asked_again(error: Exception) -> None:
    """An undo the engine fails while it restarts (gone, or answering 500s) is tried again
    within its budget: the rollback completes."""
    undo = FailingUndo("restarting", error, times=2)
    with pytest.raises(Boom):
        await run_saga([undo, FakeStep("b", fail=True)], Journal(), compensate_limit=5)
    assert undo.tries == 3


async def test_an_undo_refused_by_the_engine_fails_at_once() -> None:
    """An engine's answer to the request (a 409) is not retried: the undo fails at once."""
    undo = FailingUndo("refused", EngineError("rename", "blue", 409, "name in use"), times=100)
    with pytest.raises(RollbackIncomplete):
        await run_saga([undo, FakeStep("b", fail=True)], Journal(), compensate_limit=5)
    assert undo.tries == 1
