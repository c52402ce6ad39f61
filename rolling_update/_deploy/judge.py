"""How a run ended, decided in one place from what the host is left in."""

from __future__ import annotations

from rolling_update._deploy.outcome import Outcome
from rolling_update._deploy.saga import SagaState
from rolling_update._errors import (
    ConfigError,
    EngineError,
    FailedAfterCommit,
    PreflightError,
    ProductionDown,
    RecoveryFailed,
    RollbackIncomplete,
    StateWriteFailed,
)


def untouched(exc: BaseException) -> bool:
    """Errors raised before anything is changed, when no step has begun."""
    return isinstance(exc, ConfigError | PreflightError | EngineError | StateWriteFailed)


def down(exc: BaseException | None) -> ProductionDown | None:
    """The production container found dead past the commit, behind ``exc``."""
    if isinstance(exc, FailedAfterCommit):
        exc = exc.cause
    return exc if isinstance(exc, ProductionDown) else None


def judge(
    exc: BaseException | None, state: SagaState | None = None, signum: int | None = None
) -> Outcome:
    """How a run ended: ``exc`` it raised (if any), ``state`` the runner's progress
    (``None``: no step could have begun), ``signum`` the first SIGINT/SIGTERM received."""
    committed = state is not None and state.committed
    began = state is not None and state.current is not None
    if down(exc) is not None:
        return Outcome.PRODUCTION_DOWN
    if isinstance(exc, RollbackIncomplete | RecoveryFailed):
        return Outcome.ROLLBACK_INCOMPLETE
    if isinstance(exc, FailedAfterCommit) or (committed and isinstance(exc, Exception)):
        # Also any other failure once committed, outside the steps (the deploy's own
        # bookkeeping): the new version serves, and `recover` finishes.
        return Outcome.FAILED_AFTER_COMMIT
    if state is not None and state.failures and not committed:
        # An interrupt's rollback that did not finish: the signal is not the news.
        return Outcome.ROLLBACK_INCOMPLETE
    if signum is not None or (exc is not None and not isinstance(exc, Exception)):
        return Outcome.DEPLOYED if committed else Outcome.INTERRUPTED
    if exc is None:
        return Outcome.DEPLOYED
    if untouched(exc) and not began:
        return Outcome.REFUSED
    return Outcome.ROLLED_BACK
