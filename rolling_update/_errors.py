"""The one exception tree of rolling_update.

Every error the tool raises on purpose derives from :class:`RollingUpdateError`;
foreign errors (aiodocker, aiohttp, pydantic, tomllib, OSError) are translated
once, where they enter, with ``raise ... from exc``::

    RollingUpdateError
    ├── ConfigError            bad config file, key, or file it names   (exit 2)
    ├── PreflightError         checked before anything is touched       (exit 2)
    │   ├── EngineUnavailable  the Docker engine does not answer
    │   └── DeployLocked       another deploy of the service is under way
    ├── EngineError            a Docker API call failed mid-deploy       (exit 1)
    ├── BuildFailed            the image did not build                   (exit 1)
    ├── MigrationFailed        the one-off migration container failed    (exit 1)
    ├── GreenFailed            the new container exited or restarted     (exit 1)
    ├── ProductionFailed       the new production container died         (exit 1)
    ├── HealthCheckFailed      no healthy answer before the deadline     (exit 1)
    │   └── VerificationFailed production answered, but not as expected
    ├── TickWaitFailed         blue's tick never reached a safe boundary (exit 1)
    ├── RollbackIncomplete     a compensation failed: a human must act   (exit 3)
    └── RecoveryFailed         recover could not reach a consistent state (exit 3)

The CLI turns these into one line and an exit code, in one place
(:func:`rolling_update._cli.exit_code_for`).
"""

from __future__ import annotations

from collections.abc import Sequence


class RollingUpdateError(Exception):
    """Root of every error rolling_update raises on purpose."""


class ConfigError(RollingUpdateError):
    """The config file, a key in it, or a file it names is unusable."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class PreflightError(RollingUpdateError):
    """A check before the first change failed; nothing was touched."""


class EngineUnavailable(PreflightError):
    """The Docker engine cannot be reached."""


class EngineError(RollingUpdateError):
    """A Docker engine call failed."""

    def __init__(self, operation: str, target: str, status: int, message: str):
        self.operation = operation
        self.target = target
        self.status = status
        self.detail = message
        super().__init__(f"docker {operation} {target} failed ({status}): {message}")


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


class TickWaitFailed(RollingUpdateError):
    """Blue's tick did not reach a safe boundary in time, or could not be read."""


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


class RecoveryFailed(RollingUpdateError):
    """``recover`` could not bring the host to a consistent, serving state."""
