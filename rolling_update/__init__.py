"""rolling_update: blue-green updates of a long-running Docker service.

Compose steps into a list and run them::

    from rolling_update import deploy, default_plan, load_config

    cfg = load_config(Path("rolling-update.toml"))
    await deploy(cfg, steps=[*default_plan(cfg), MyNotifyStep()])
"""

from rolling_update._config.settings import Config, load_config
from rolling_update._deploy.context import DeployContext
from rolling_update._deploy.deploy import DeployResult, deploy
from rolling_update._deploy.outcome import HostOutcome
from rolling_update._deploy.plan import PlanFactory, default_plan
from rolling_update._deploy.release import prepare
from rolling_update._deploy.saga import Step, StepRecord, run_saga
from rolling_update._engine.docker import DockerEngine
from rolling_update._engine.model import ContainerEvent, ContainerInfo, ContainerSpec, Engine
from rolling_update._errors import (
    ActionFailed,
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
    HelperNotRun,
    MigrationFailed,
    PreflightError,
    ProductionDown,
    ProductionFailed,
    RecoveryFailed,
    RestoreFailed,
    RollbackIncomplete,
    RollingUpdateError,
    RolloutFailed,
    ShiftGateFailed,
    StateWriteFailed,
    TickWaitFailed,
    VerificationFailed,
)
from rolling_update._hosts.rollout import RolloutResult, rollout
from rolling_update._observe.logs import configure as configure_logging
from rolling_update._operate.recover import RecoveryReport, recover
from rolling_update._operate.rollback import rollback

__all__ = [
    "ActionFailed",
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
    "HelperNotRun",
    "HostOutcome",
    "MigrationFailed",
    "PlanFactory",
    "PreflightError",
    "ProductionDown",
    "ProductionFailed",
    "RecoveryFailed",
    "RecoveryReport",
    "RestoreFailed",
    "RollbackIncomplete",
    "RollingUpdateError",
    "RolloutFailed",
    "RolloutResult",
    "ShiftGateFailed",
    "StateWriteFailed",
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
    "rollback",
    "rollout",
    "run_saga",
]
