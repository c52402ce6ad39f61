"""Exit codes and the one line an operator reads, from what the host is left in.

The decision is :func:`rolling_update._deploy.judge.judge`'s; this module words it.
"""

from __future__ import annotations

import signal

from rolling_update._deploy.judge import down, judge
from rolling_update._deploy.outcome import (
    Outcome,
)
from rolling_update._deploy.saga import SagaState
from rolling_update._errors import (
    ContainerFailure,
    EngineError,
    FailedAfterCommit,
    RecoveryFailed,
    RollbackIncomplete,
    RollingUpdateError,
)
from rolling_update._observe.logs import redactor

EXIT_TABLE = """\
exit codes (what the host is left in):
  0    deployed: the new version serves (recover: the host is consistent)
  1    failed and rolled back: the old version serves, as healthy as it was found
  2    nothing was changed: usage, config or preflight error, engine unreachable,
       service locked, or the version asked for already serves (--force)
  3    the rollback or recovery is incomplete, or the new version died past the commit
       with nothing to restart it: a human must act (the message says what)
  4    the new version serves, but a step after the point of no return failed;
       `recover` finishes what it left
  130  interrupted by SIGINT, rolled back: the old version serves
  143  interrupted by SIGTERM, rolled back: the old version serves"""


def outcome(
    exc: BaseException | None, state: SagaState | None = None, signum: int | None = None
) -> tuple[int, str | None]:
    """The exit code and the one line for the operator, from what the host is left in.

    ``state`` is the runner's progress (``None``: no step could have begun),
    ``signum`` the first SIGINT/SIGTERM received, if any.
    """
    result = judge(exc, state, signum)
    code = result.exit_code(signum)
    if result is Outcome.DEPLOYED:
        return code, None
    if result is Outcome.PRODUCTION_DOWN:
        return code, (
            f"error: {down(exc)}. `rolling-update recover` starts the new version again; "
            "check why it stopped first (`docker logs`)."
        )
    if result is Outcome.ROLLBACK_INCOMPLETE:
        if isinstance(exc, RecoveryFailed):
            return code, f"error: recovery incomplete: {exc}"
        then = "Run `rolling-update recover`, or check `docker ps -a`."
        if state is not None and state.engine_unanswered:
            then = (
                "The Docker engine stopped answering: the host is left part-way through "
                "the rollback, as the journal records; once the engine answers again, run "
                "`rolling-update recover`."
            )
        if isinstance(exc, RollbackIncomplete) or state is None:
            return code, f"error: {exc}. {then}"
        undone = "; ".join(f"{step}: {why}" for step, why in state.failures)
        return code, f"error: rollback incomplete: {undone}. {then}"
    if result is Outcome.FAILED_AFTER_COMMIT:
        return (
            code,
            f"error: {exc} (the new version serves; run `rolling-update recover` to finish)",
        )
    if result is Outcome.INTERRUPTED:
        name = signal.Signals(signum).name if signum is not None else type(exc).__name__
        # A failure racing the interrupt changes nothing: the rollback ran either way.
        if state is None or state.current is None:
            return code, f"interrupted by {name}: nothing was changed"
        return code, (
            f"interrupted by {name} during {state.current}: "
            "rolled back, the previous version serves"
        )
    if result is Outcome.REFUSED:
        return code, f"error: {exc} (nothing was changed)"
    if isinstance(exc, EngineError):
        return code, (
            f"error: the Docker engine failed during the deploy: {exc} "
            "(rolled back: the previous version serves)"
        )
    if isinstance(exc, RollingUpdateError):
        return code, f"error: {exc} (rolled back: the previous version serves)"
    return code, f"error: unexpected {type(exc).__name__}: {exc} (rolled back)"


def describe(exc: BaseException, line: str) -> str:
    """``line``, then the failing container's last log lines; secrets blanked."""
    failure = exc.cause if isinstance(exc, RollbackIncomplete | FailedAfterCommit) else exc
    if isinstance(failure, ContainerFailure) and failure.last_logs:
        tail = "\n".join(f"  | {ln}" for ln in failure.last_logs[-15:])
        line += f"\nlast log lines of {failure.container}:\n{tail}"
    return str(redactor.scrub(line))
