"""rolling_update: blue-green updates of a long-running Docker service.

Compose steps into a list and run them::

    from rolling_update import deploy, default_plan, load_config

    cfg = load_config(Path("rolling-update.toml"))
    await deploy(cfg, steps=[*default_plan(cfg), MyNotifyStep()])
"""

from ._config import Config, load_config
from ._context import DeployContext
from ._deploy import DeployResult, default_plan, deploy, prepare
from ._engine import ContainerEvent, ContainerInfo, ContainerSpec, DockerEngine, Engine
from ._errors import (
    BuildFailed,
    ConfigError,
    ConflictError,
    ContainerFailure,
    DeployLocked,
    EngineError,
    EngineUnavailable,
    FailedAfterCommit,
    GreenFailed,
    HandoffError,
    HealthCheckFailed,
    MigrationFailed,
    PreflightError,
    ProductionFailed,
    RecoveryFailed,
    RestoreFailed,
    RollbackIncomplete,
    RollingUpdateError,
    RolloutFailed,
    TickWaitFailed,
    VerificationFailed,
)
from ._logging import configure as configure_logging
from ._recover import RecoveryReport, recover
from ._rollout import HostOutcome, RolloutResult, rollout
from ._saga import Step, StepRecord, run_saga

__all__ = [
    "BuildFailed",
    "Config",
    "ConfigError",
    "ConflictError",
    "ContainerEvent",
    "ContainerFailure",
    "ContainerInfo",
    "ContainerSpec",
    "DeployContext",
    "DeployLocked",
    "DeployResult",
    "DockerEngine",
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "FailedAfterCommit",
    "GreenFailed",
    "HandoffError",
    "HealthCheckFailed",
    "HostOutcome",
    "MigrationFailed",
    "PreflightError",
    "ProductionFailed",
    "RecoveryFailed",
    "RecoveryReport",
    "RestoreFailed",
    "RollbackIncomplete",
    "RollingUpdateError",
    "RolloutFailed",
    "RolloutResult",
    "Step",
    "StepRecord",
    "TickWaitFailed",
    "VerificationFailed",
    "configure_logging",
    "default_plan",
    "deploy",
    "load_config",
    "prepare",
    "recover",
    "rollout",
    "run_saga",
]
