"""One outcome type: each way a run ends has one name and one exit code."""

from __future__ import annotations

import signal

import pytest

from rolling_update._cli.exits import EXIT_TABLE
from rolling_update._deploy.judge import judge
from rolling_update._deploy.outcome import Outcome, worst
from rolling_update._deploy.saga import SagaState
from rolling_update._errors import (
    ConfigError,
    EngineError,
    FailedAfterCommit,
    ProductionDown,
    RollingUpdateError,
)
from rolling_update._observe.history import HistoryEntry
from rolling_update._operate.rollback import previous_version


def test_every_outcome_has_an_exit_code_the_table_documents() -> None:
    """No outcome lacks a code, and each code is a row of deploy --help's exit table."""
    for result in Outcome:
        code = result.exit_code(signal.SIGINT)
        assert f"\n  {code} " in EXIT_TABLE, (result, code)


@pytest.mark.parametrize(
    ("exc", "began", "committed", "signum", "expected"),
    [
        (None, True, True, None, Outcome.DEPLOYED),
        (ConfigError("bad"), False, False, None, Outcome.REFUSED),
        (RollingUpdateError("green died"), True, False, None, Outcome.ROLLED_BACK),
        (
            FailedAfterCommit(RuntimeError("cleanup"), "cleanup"),
            True,
            True,
            None,
            Outcome.FAILED_AFTER_COMMIT,
        ),
        # Production found dead past the commit: nothing serves, a human must act.
        (
            FailedAfterCommit(ProductionDown("app was OOM-killed"), "cleanup"),
            True,
            True,
            None,
            Outcome.PRODUCTION_DOWN,
        ),
        # The engine failing the mark's removal after the steps: the new version serves.
        (
            EngineError("volume rm", "mark", 500, "database not open"),
            True,
            True,
            None,
            Outcome.FAILED_AFTER_COMMIT,
        ),
        (KeyboardInterrupt(), True, False, signal.SIGINT, Outcome.INTERRUPTED),
        (KeyboardInterrupt(), True, True, signal.SIGINT, Outcome.DEPLOYED),
    ],
)
def test_judge_decides_from_what_the_run_left(
    exc: BaseException | None, began: bool, committed: bool, signum: int | None, expected: Outcome
) -> None:
    """The same judgement serves the audit log, a rollout's host and the CLI."""
    state = SagaState()
    state.current = "switch" if began else None
    state.committed = committed
    assert judge(exc, state, signum) is expected


def test_a_rollout_exits_with_its_worst_host() -> None:
    """A host that needs a human outweighs a failure after commit, which outweighs a rollback."""
    needs_a_human = ["deployed", "revert-failed", "failed-after-commit"]
    assert worst(needs_a_human, failed=True, signum=None) == 3
    assert worst(["production-down", "failed-after-commit"], failed=True, signum=None) == 3
    assert worst(["deployed", "failed-after-commit"], failed=True, signum=None) == 4
    assert worst(["deployed", "rolled-back", "not-started"], failed=True, signum=None) == 1
    assert worst(["refused", "not-started"], failed=True, signum=None) == 2
    assert worst(["deployed", "interrupted"], failed=True, signum=signal.SIGTERM) == 143
    assert worst(["deployed"], failed=False, signum=None) == 0


def _run(result: Outcome, came: str, went: str) -> HistoryEntry:
    return HistoryEntry(
        id="a1", kind="deploy", service="svc", started_at="", ended_at="", user="u", host="h",
        from_version=came, to_version=went, result=result,
    )  # fmt: skip


def test_a_rollback_goes_back_to_what_came_before_the_commit_of_what_serves() -> None:
    """A deploy that died or failed past its commit took the host to its version as one that
    ended cleanly did: rollback's default is where the newest of them came from."""
    history = [
        _run(Outcome.DEPLOYED, "1.0.0", "2.0.0"),
        _run(Outcome.ROLLED_BACK, "2.0.0", "3.0.0"),
        _run(Outcome.PRODUCTION_DOWN, "2.0.0", "3.0.0"),
        _run(Outcome.RECOVERED, "3.0.0", "3.0.0"),
    ]
    assert previous_version(history, "3.0.0") == "2.0.0"
    assert previous_version(history, "2.0.0") == "1.0.0"
    failed = [_run(Outcome.FAILED_AFTER_COMMIT, "1.0.0", "2.0.0")]
    assert previous_version(failed, "2.0.0") == "1.0.0"
    assert previous_version(history[1:2], "3.0.0") is None
