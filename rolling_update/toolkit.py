"""The public toolkit for writing steps: everything a step needs, no private imports.

A step is any class with ``name``, ``title``, ``async run(ctx)`` and
``async compensate(ctx)``. The built-in steps (the ``steps`` package) import
from here and nowhere else in ``rolling_update``, so each of them is an example
of a custom step. From here a step gets:

- the context it is handed (:class:`DeployContext`) and the config sections it
  holds its slice of;
- the engine protocol, container specs and the label a service's images carry;
- the concurrent waits (a container watched for death, memory and deadlines while
  a body runs; health polls; a wait that says what it waits for);
- HTTP probes and their pure judges (health body, tick status), and a client's session
  (its sockets unmarked: the handoff's redirect applies to it);
- what may be removed (:func:`remove_ours`, :func:`clear_name`), and blue renamed
  (:func:`rename_blue`);
- lifecycle actions, logged commands, secret redaction, the builder choice,
  blue's twin's differences and compose's config hash;
- the errors to raise::

    from rolling_update.toolkit import DeployContext, RollingUpdateError, remove_ours
"""

from rolling_update._config.settings import (
    BuildConfig,
    GreenConfig,
    HealthConfig,
    ImageConfig,
    MigrateConfig,
    Moment,
    ServiceConfig,
    SwitchConfig,
    TickConfig,
    VerifyConfig,
)
from rolling_update._deploy.actions import ask_to_stop_accepting, run_actions
from rolling_update._deploy.compose import CONFIG_HASH, config_hash, made_by_compose
from rolling_update._deploy.context import DeployContext
from rolling_update._deploy.policy import clear_name, remove_ours, rename_blue
from rolling_update._deploy.process import run_logged
from rolling_update._deploy.records import (
    BlueChecked,
    BlueLastServed,
    GreenStarted,
    Preflight,
    Redirected,
    Shifted,
    ShiftStep,
    Switched,
    Verified,
)
from rolling_update._deploy.release import Release
from rolling_update._deploy.saga import Step, again_while_away
from rolling_update._deploy.session import client_session
from rolling_update._deploy.twin import diff
from rolling_update._engine.builder import choose_builder
from rolling_update._engine.model import (
    LABEL_SERVICE,
    BuildOptions,
    ContainerEvent,
    ContainerInfo,
    ContainerSpec,
    Engine,
    split_reference,
)
from rolling_update._errors import (
    ActionFailed,
    BuildFailed,
    ConfigError,
    ConflictError,
    ContainerFailure,
    EngineError,
    EngineUnavailable,
    GreenFailed,
    HealthCheckFailed,
    HelperNotRun,
    MigrationFailed,
    PreflightError,
    ProductionDown,
    ProductionFailed,
    RestoreFailed,
    RollingUpdateError,
    ShiftGateFailed,
    TickWaitFailed,
    VerificationFailed,
    disk_full_said,
)
from rolling_update._handoff.connections import drained
from rolling_update._handoff.port import PortHandoff
from rolling_update._observe import measures
from rolling_update._observe.logs import redactor
from rolling_update._observe.progress import waiting
from rolling_update._watch.health import (
    LastProbe,
    await_docker_healthy,
    await_healthy,
    poll_until_healthy,
    restore_wait,
)
from rolling_update._watch.probe import (
    Answer,
    check_health,
    judge_health,
    parse_tick,
    port_in_use,
    probe,
    tick_state,
)
from rolling_update._watch.tasks import task_group
from rolling_update._watch.watch import Watch, ended_as_found, watching

__all__ = [
    "CONFIG_HASH",
    "LABEL_SERVICE",
    "ActionFailed",
    "Answer",
    "BlueChecked",
    "BlueLastServed",
    "BuildConfig",
    "BuildFailed",
    "BuildOptions",
    "ConfigError",
    "ConflictError",
    "ContainerEvent",
    "ContainerFailure",
    "ContainerInfo",
    "ContainerSpec",
    "DeployContext",
    "Engine",
    "EngineError",
    "EngineUnavailable",
    "GreenConfig",
    "GreenFailed",
    "GreenStarted",
    "HealthCheckFailed",
    "HealthConfig",
    "HelperNotRun",
    "ImageConfig",
    "LastProbe",
    "MigrateConfig",
    "MigrationFailed",
    "Moment",
    "PortHandoff",
    "Preflight",
    "PreflightError",
    "ProductionDown",
    "ProductionFailed",
    "Redirected",
    "Release",
    "RestoreFailed",
    "RollingUpdateError",
    "ServiceConfig",
    "ShiftGateFailed",
    "ShiftStep",
    "Shifted",
    "Step",
    "SwitchConfig",
    "Switched",
    "TickConfig",
    "TickWaitFailed",
    "VerificationFailed",
    "Verified",
    "VerifyConfig",
    "Watch",
    "again_while_away",
    "ask_to_stop_accepting",
    "await_docker_healthy",
    "await_healthy",
    "check_health",
    "choose_builder",
    "clear_name",
    "client_session",
    "config_hash",
    "diff",
    "disk_full_said",
    "drained",
    "ended_as_found",
    "judge_health",
    "made_by_compose",
    "measures",
    "parse_tick",
    "poll_until_healthy",
    "port_in_use",
    "probe",
    "redactor",
    "remove_ours",
    "rename_blue",
    "restore_wait",
    "run_actions",
    "run_logged",
    "split_reference",
    "task_group",
    "tick_state",
    "waiting",
    "watching",
]
