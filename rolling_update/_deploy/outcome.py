"""How a deploy ended: its name (the audit log's word) and its exit code, one type for all.

:func:`rolling_update._deploy.judge.judge` decides it from what the host is left in;
the deploy writes it to the audit log (and so the metrics), a rollout gives it to
each host (:class:`HostOutcome`), and the CLI exits with its code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

EXIT_OK = 0
EXIT_ROLLED_BACK = 1
EXIT_USAGE = 2
EXIT_ROLLBACK_INCOMPLETE = 3
EXIT_FAILED_AFTER_COMMIT = 4
EXIT_SIGNAL_BASE = 128


class Outcome(StrEnum):
    DEPLOYED = "deployed"
    ROLLED_BACK = "rolled-back"
    REFUSED = "refused"
    """Nothing was changed: bad input, a preflight or the engine refused before any step."""
    INTERRUPTED = "interrupted"
    ROLLBACK_INCOMPLETE = "rollback-incomplete"
    FAILED_AFTER_COMMIT = "failed-after-commit"
    PRODUCTION_DOWN = "production-down"
    """Past the commit the new version died and nothing restarted it: nothing serves."""
    NOT_STARTED = "not-started"
    """Several hosts: the rollout stopped before this host's turn."""
    REVERTED = "reverted"
    """Several hosts: rollback-all took this updated host back."""
    REVERT_FAILED = "revert-failed"
    RECOVERED = "recovered"
    """``recover``: the host is consistent again."""
    RECOVERY_FAILED = "recovery-failed"

    @property
    def committed(self) -> bool:
        """The run took the host to its new version past the point of no return (it serves,
        or served and died there): what came before it is what a rollback goes back to."""
        return self in _COMMITTED

    def exit_code(self, signum: int | None = None) -> int:
        """The CLI's exit code for this outcome (``signum``: the signal that interrupted)."""
        if self is Outcome.INTERRUPTED:
            return EXIT_SIGNAL_BASE + (signum or 0)
        return _EXIT[self]


_COMMITTED = frozenset({Outcome.DEPLOYED, Outcome.FAILED_AFTER_COMMIT, Outcome.PRODUCTION_DOWN})
_EXIT = {
    Outcome.DEPLOYED: EXIT_OK,
    Outcome.ROLLED_BACK: EXIT_ROLLED_BACK,
    Outcome.REVERTED: EXIT_ROLLED_BACK,
    Outcome.REFUSED: EXIT_USAGE,
    Outcome.NOT_STARTED: EXIT_USAGE,
    Outcome.ROLLBACK_INCOMPLETE: EXIT_ROLLBACK_INCOMPLETE,
    Outcome.REVERT_FAILED: EXIT_ROLLBACK_INCOMPLETE,
    Outcome.RECOVERED: EXIT_OK,
    Outcome.RECOVERY_FAILED: EXIT_ROLLBACK_INCOMPLETE,
    Outcome.FAILED_AFTER_COMMIT: EXIT_FAILED_AFTER_COMMIT,
    Outcome.PRODUCTION_DOWN: EXIT_ROLLBACK_INCOMPLETE,
}


def worst(outcomes: Iterable[str], *, failed: bool, signum: int | None) -> int:
    """A rollout's exit code from its hosts' outcomes: a host that needs a human first, then
    one that failed after its commit, then the interrupt; refusals alone are a usage error."""
    results = {Outcome(o) for o in outcomes}
    codes = {_EXIT.get(result) for result in results}
    if EXIT_ROLLBACK_INCOMPLETE in codes:
        return EXIT_ROLLBACK_INCOMPLETE
    if EXIT_FAILED_AFTER_COMMIT in codes:
        return EXIT_FAILED_AFTER_COMMIT
    if signum is not None:
        return EXIT_OK if results == {Outcome.DEPLOYED} else EXIT_SIGNAL_BASE + signum
    if not failed:
        return EXIT_OK
    if results <= {Outcome.REFUSED, Outcome.NOT_STARTED}:
        return EXIT_USAGE
    return EXIT_ROLLED_BACK


@dataclass
class HostOutcome:
    """How one host ended: ``deployed``, ``rolled-back``, ``refused``, ``interrupted``,
    ``rollback-incomplete``, ``failed-after-commit``, ``production-down``, ``not-started``,
    ``reverted`` (rollback-all took it back) or ``revert-failed``."""

    host: str
    result: str = Outcome.NOT_STARTED
    from_version: str | None = None
    to_version: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    measured: dict[str, Any] = field(default_factory=dict)
