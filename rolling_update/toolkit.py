"""The public toolkit for writing steps: everything a custom step needs, no private imports.

A step is any class with ``name``, ``title``, ``async run(ctx)`` and
``async compensate(ctx)``. From here it gets the context it is handed, the
engine protocol and container specs, the concurrent waits (a container
watched for death, memory and deadlines while a body runs; health polls),
HTTP probes and their judgement, the errors to raise, and the helper that
removes only what this deploy made::

    from rolling_update.toolkit import DeployContext, RollingUpdateError, remove_ours
"""

from rolling_update._deploy.context import DeployContext
from rolling_update._deploy.policy import clear_name, remove_ours
from rolling_update._deploy.saga import Step
from rolling_update._engine.docker import ContainerEvent, ContainerInfo, ContainerSpec, Engine
from rolling_update._watch.probe import Answer, judge_health, probe
from rolling_update._watch.watch import (
    LastProbe,
    Watch,
    await_healthy,
    poll_until_healthy,
    watching,
)

from ._errors import (
    ActionFailed,
    BuildFailed,
    ConfigError,
    ConflictError,
    ContainerFailure,
    EngineError,
    GreenFailed,
    HealthCheckFailed,
    MigrationFailed,
    PreflightError,
    ProductionFailed,
    RestoreFailed,
    RollingUpdateError,
    TickWaitFailed,
    VerificationFailed,
)

__all__ = [
    "ActionFailed",
    "Answer",
    "BuildFailed",
    "ConfigError",
    "ConflictError",
    "ContainerEvent",
    "ContainerFailure",
    "ContainerInfo",
    "ContainerSpec",
    "DeployContext",
    "Engine",
    "EngineError",
    "GreenFailed",
    "HealthCheckFailed",
    "LastProbe",
    "MigrationFailed",
    "PreflightError",
    "ProductionFailed",
    "RestoreFailed",
    "RollingUpdateError",
    "Step",
    "TickWaitFailed",
    "VerificationFailed",
    "Watch",
    "await_healthy",
    "clear_name",
    "judge_health",
    "poll_until_healthy",
    "probe",
    "remove_ours",
    "watching",
]
