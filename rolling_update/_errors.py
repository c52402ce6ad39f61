"""The one exception tree of rolling_update.

Every error the tool raises on purpose derives from :class:`RollingUpdateError`;
foreign errors (aiodocker, aiohttp, pydantic, tomllib, OSError) are translated
once, where they enter, with ``raise ... from exc``::

    RollingUpdateError
    ├── ConfigError            bad config file, key, or file it names
    ├── PreflightError         a check before the first change failed
    │   └── DeployLocked       another deploy of the service is under way
    ├── ConflictError          a name or port got taken after the preflight
    ├── EngineError            a Docker API call failed
    │   └── EngineUnavailable  the Docker engine does not answer
    ├── BuildFailed            the image did not build
    ├── MigrationFailed        the one-off migration container failed
    ├── GreenFailed            the new container exited or restarted
    ├── ProductionFailed       the new production container died
    ├── HealthCheckFailed      no healthy answer before the deadline
    │   ├── VerificationFailed production answered, but not as expected
    │   └── ShiftGateFailed    a gate of the gradual traffic shift failed
    ├── TickWaitFailed         blue's tick never reached a safe boundary
    ├── ActionFailed           a lifecycle HTTP action failed
    ├── RestoreFailed          blue could not be brought back
    ├── HandoffError           an nftables change (or connection count) of the handoff failed
    │   └── HelperNotRun       the engine refused the helper container: nothing of it ran
    ├── RollbackIncomplete     a compensation failed: a human must act
    ├── FailedAfterCommit      a step after the point of no return failed
    ├── RecoveryFailed         recover could not reach a consistent state
    ├── StateWriteFailed       the lock, journal or audit log could not be written (a full disk)
    └── RolloutFailed          a host of several failed; the rollout stopped

The exit code follows what the host is left in, not the class alone: the
CLI (:func:`rolling_update._cli.outcome`) also asks whether any step had
begun, so "nothing was changed" is only said when nothing was.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from rolling_update._observe.logs import redactor

if TYPE_CHECKING:
    from rolling_update._deploy.outcome import HostOutcome


class RollingUpdateError(Exception):
    """Root of every error rolling_update raises on purpose.

    Its text is scrubbed of registered secrets whenever it is rendered, so a
    caller printing or logging the error (with any logging set-up) never
    shows a secret that a container or an answer put into it.
    """

    def __str__(self) -> str:
        return str(redactor.scrub(super().__str__()))


class ConfigError(RollingUpdateError):
    """The config file, a key in it, or a file it names is unusable."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class PreflightError(RollingUpdateError):
    """A check before the first change failed; nothing was touched."""


class DeployLocked(PreflightError):
    """Another deploy or recovery of the same service holds the lock."""


class ConflictError(RollingUpdateError):
    """A name or port the preflight found free was taken once the deploy had begun."""


class EngineError(RollingUpdateError):
    """A Docker engine call failed."""

    def __init__(self, operation: str, target: str, status: int, message: str):
        self.operation = operation
        self.target = target
        self.status = status
        self.detail = message
        super().__init__(f"docker {operation} {target} failed ({status}): {message}")


class EngineUnavailable(EngineError):
    """The Docker engine cannot be reached."""

    def __init__(self, message: str):
        self.operation, self.target, self.status, self.detail = "connect", "engine", 0, message
        RollingUpdateError.__init__(self, message)


class ContainerFailure(RollingUpdateError):
    """Base of failures that come with the container's last log lines."""

    def __init__(self, message: str, *, container: str, last_logs: Sequence[str] = ()):
        self.container = container
        self.last_logs = list(last_logs)
        super().__init__(message)


class BuildFailed(RollingUpdateError):
    """The image build failed."""


class MigrationFailed(ContainerFailure):
    """The migration container exited non-zero or ran past its deadline."""


class GreenFailed(ContainerFailure):
    """The new container exited, restarted or was killed while warming up."""


class ProductionFailed(ContainerFailure):
    """The new production container exited or restarted after the switch."""


class HealthCheckFailed(RollingUpdateError):
    """No acceptable health answer before the deadline."""

    def __init__(self, message: str, *, url: str, why: str):
        self.url = url
        self.why = why
        super().__init__(f"{message}: {why}")


class VerificationFailed(HealthCheckFailed):
    """Production did not serve the new version healthily in time."""


class ShiftGateFailed(HealthCheckFailed):
    """A step of the gradual shift (``switch.steps``) failed its gate: an answer through
    production's port or of green was not healthy, or the metrics query was above its
    bound or unreadable. ``share`` is the step's percent."""

    def __init__(self, message: str, *, url: str, why: str, share: int):
        self.share = share
        super().__init__(message, url=url, why=why)


class TickWaitFailed(RollingUpdateError):
    """Blue's tick did not reach a safe boundary in time, or could not be read."""


class ActionFailed(RollingUpdateError):
    """A lifecycle HTTP action (``[[actions]]``) failed or its wait ran out."""


class RestoreFailed(RollingUpdateError):
    """Blue could not be brought back to the state it was found in."""


class RollbackIncomplete(RollingUpdateError):
    """At least one compensation failed or ran past its deadline.

    ``cause`` is the error that started the rollback; ``failures`` names each
    step whose undo did not finish, with why.
    """

    def __init__(self, cause: BaseException, failures: Sequence[tuple[str, str]]):
        self.cause = cause
        self.failures = list(failures)
        detail = "; ".join(f"{step}: {why}" for step, why in self.failures)
        super().__init__(f"{cause} — and the rollback is incomplete: {detail}")


class FailedAfterCommit(RollingUpdateError):
    """A step after the point of no return failed; the new version still serves.

    Nothing is rolled back at that point (the new version was verified and
    soaked); ``cause`` is the step's error.
    """

    def __init__(self, cause: BaseException, step: str | None):
        self.cause = cause
        self.step = step
        super().__init__(f"{step or 'a step'} failed after the new version was committed: {cause}")


class ProductionDown(RollingUpdateError):
    """Past the commit, the new production container stopped and nothing brought it back:
    production's port is dark, and a human must decide (exit 3). The previous version's
    container is kept."""


class RecoveryFailed(RollingUpdateError):
    """``recover`` could not bring the host to a consistent, serving state."""


class StateWriteFailed(RollingUpdateError):
    """A file of the tool's state on this host (lock, journal, audit log) could not be
    written, typically ``No space left on device``; ``path`` names it."""

    def __init__(self, what: str, path: str, exc: OSError) -> None:
        self.path = path
        super().__init__(f"cannot write the {what} {path}: {exc.strerror or exc}")


class HandoffError(RollingUpdateError):
    """An nftables change of the handoff failed (here, or through a remote helper), or the
    connections of a container could not be counted."""


class HelperNotRun(HandoffError):
    """The engine refused to make or start a helper container (its disk full, say): what
    the helper was to run never ran, so it changed nothing on the host."""


class RolloutFailed(RollingUpdateError):
    """A host failed (or was interrupted); the rollout stopped. ``outcomes`` says where."""

    def __init__(self, message: str, outcomes: Sequence[HostOutcome]) -> None:
        super().__init__(message)
        self.outcomes = list(outcomes)


# ENOSPC as libc and Go print it.
_DISK_FULL = "no space left on device"


def disk_full_said(lines: Iterable[str]) -> str:
    """``"; the disk is full: <line>"`` when one of a failed command's last output
    ``lines`` met ENOSPC (the last such line), else ``""``: a build step or a migration
    that meets a full disk fails through its own error, and its exit code alone does not
    say why."""
    full = [line for line in lines if _DISK_FULL in line.lower()]
    return f"; the disk is full: {full[-1].strip()}" if full else ""
