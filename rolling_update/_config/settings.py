"""Config: a TOML file validated by pydantic, plus the files it names.

Everything that can be wrong with the input is found here, before the first
Docker call, and reported as a :class:`ConfigError` naming the file and key.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from rolling_update._errors import ConfigError

DEFAULT_CONFIG = Path("rolling-update.toml")

_CONTAINER_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_EXPANSION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Port = Annotated[int, Field(ge=1, le=65535)]
Seconds = Annotated[float, Field(ge=0, le=86_400)]
PositiveSeconds = Annotated[float, Field(gt=0, le=86_400)]
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_env_names(env: dict[str, str]) -> dict[str, str]:
    for key in env:
        if not _ENV_NAME.match(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
    return env


EnvMap = Annotated[dict[str, str], AfterValidator(_check_env_names)]


def _check_container_name(value: str) -> str:
    if not _CONTAINER_NAME.match(value):
        raise ValueError(f"{value!r} is not a valid container name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
    return value


ContainerName = Annotated[str, AfterValidator(_check_container_name)]


def bypass_of(port: int) -> int:
    """The remote handoff's default way past the redirect of ``port``: port + 10000 (or
    - 10000 where that passes 65535)."""
    return port + 10_000 if port + 10_000 <= 65_535 else port - 10_000


class ReplicaConfig(_Section):
    """One replica of the service on a host: its own containers and ports."""

    name: ContainerName = Field(description="The replica's name, in logs, state and --replica.")
    port: Port = Field(description="The replica's production port.")
    green_port: Port = Field(description="The port its green serves on while it warms up.")
    container: ContainerName | None = Field(
        None, description="Its production container's name; default: name."
    )
    green_container: ContainerName | None = Field(
        None, description="Its green's name; default: the container's name + '-green'."
    )


class ServiceConfig(_Section):
    name: str = Field(description="Name of the production container (blue, then the new one).")
    green_name: str = Field(description="Name of the container that warms up beside blue.")
    host: str = Field("127.0.0.1", description="Address the tool probes the service on.")
    port: Port = Field(description="Port production serves on.")
    green_port: Port = Field(description="Port green serves on while it warms up.")
    port_env: list[str] = Field(
        default_factory=lambda: ["PORT"],
        min_length=1,
        description="Env var(s) that tell the app which port to bind; each gets the port.",
    )
    network: str = Field("host", description="Docker network mode of every container.")
    env_file: Path | None = Field(
        None, description="Env file passed to every container (docker --env-file format)."
    )
    restart: Literal["no", "always", "unless-stopped", "on-failure"] = Field(
        "unless-stopped",
        description="Restart policy of the new production container when there is no blue "
        "(blue's own otherwise). Green always runs with no: a daemon restart must not bring "
        "back a green beside blue.",
    )
    stop_timeout: int = Field(
        10, ge=0, le=3600, description="Seconds between SIGTERM and SIGKILL when stopping blue."
    )
    replicas: int = Field(
        1,
        ge=1,
        le=100,
        description="Containers of the service on each host, updated one at a time; replica i "
        "(from 1) is NAME-i on port + (i-1) * replica_port_step, its green NAME-i-green on "
        "green_port + (i-1) * replica_port_step. 1: the service is one container, as named.",
    )
    replica_port_step: int = Field(
        10, ge=1, le=10_000, description="Ports between two derived replicas."
    )
    replica: list[ReplicaConfig] = Field(
        default_factory=list,
        description="The replicas named one by one instead of derived ([[service.replica]]).",
    )
    tick_replica: int = Field(
        1,
        ge=1,
        description="The replica (from 1, in order) whose production runs the tick loop; the "
        "others run drained (actions with replicas = 'tick' or 'others').",
    )

    @field_validator("name", "green_name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_container_name(value)

    @field_validator("port_env")
    @classmethod
    def _valid_port_env(cls, value: list[str]) -> list[str]:
        _check_env_names(dict.fromkeys(value, ""))
        return value

    def url(self, port: int, path: str) -> str:
        """Where the tool probes ``path`` of the service on ``port``."""
        return f"http://{self.host}:{port}{path}"

    @property
    def old_name(self) -> str:
        """Name blue carries between the switch and its removal."""
        return f"{self.name}-old"

    @property
    def migrate_name(self) -> str:
        """Name of the one-off migration container."""
        return f"{self.name}-migrate"

    @model_validator(mode="after")
    def _distinct(self) -> ServiceConfig:
        if self.port == self.green_port:
            raise ValueError(f"port and green_port are both {self.port}; they must differ")
        if self.name == self.green_name:
            raise ValueError("name and green_name must differ")
        return self

    @property
    def replicated(self) -> bool:
        """Whether the service is several replicas (or named ones): each a unit of a rollout."""
        return self.replicas > 1 or bool(self.replica)

    def replica_list(self) -> list[ReplicaConfig]:
        """Every replica, in order, with its names and ports filled in (derived or given).

        Raises ``ValueError`` naming the key when they do not fit (a port past 65535, a
        port or name used twice, a tick_replica that is not one of them)."""
        if self.replica and self.replicas not in (1, len(self.replica)):
            raise ValueError(
                f"service.replicas is {self.replicas} but {len(self.replica)} "
                "[[service.replica]] are given: set one of them"
            )
        if self.replica:
            found = [
                r.model_copy(
                    update={
                        "container": r.container or r.name,
                        "green_container": r.green_container or f"{r.container or r.name}-green",
                    }
                )
                for r in self.replica
            ]
        else:
            step = self.replica_port_step
            top = max(self.port, self.green_port) + (self.replicas - 1) * step
            if top > 65_535:
                raise ValueError(
                    f"service.replica_port_step: {self.replicas} replicas {step} ports apart "
                    f"reach port {top}, past 65535"
                )
            found = [
                ReplicaConfig(
                    name=f"{self.name}-{i}",
                    port=self.port + (i - 1) * step,
                    green_port=self.green_port + (i - 1) * step,
                    container=f"{self.name}-{i}",
                    green_container=f"{self.name}-{i}-green",
                )
                for i in range(1, self.replicas + 1)
            ]
        if self.tick_replica > len(found):
            raise ValueError(
                f"service.tick_replica is {self.tick_replica}, but there are {len(found)} replicas"
            )
        ports: dict[int, str] = {}
        names: dict[str, str] = {}
        for r in found:
            for key, port in (("port", r.port), ("green_port", r.green_port)):
                if port in ports and self.replica:
                    raise ValueError(
                        f"service.replica.{r.name}.{key}: port {port} is also {ports[port]}"
                    )
                if port in ports:
                    # Derived: no table of the replica's own; the service's keys made it.
                    raise ValueError(
                        f"service.replica_port_step: {r.name}'s {key} {port} is also "
                        f"{ports[port]} (service.port, green_port and the step derive them)"
                    )
                ports[port] = f"{r.name}'s {key}"
            for key, name in (
                ("name", r.name),
                ("container", r.container),
                ("green_container", r.green_container),
            ):
                assert name is not None
                if name in names and not (key == "container" and name == r.name):
                    raise ValueError(
                        f"service.replica.{r.name}.{key}: {name!r} is also {names[name]}"
                    )
                names[name] = f"{r.name}'s {key}"
        return found

    def check_bypass_ports(self, host: str) -> None:
        """Raise ``ValueError`` naming the key when a replica's bypass port (``bypass_of`` its
        port) is a replica's port or another's bypass port on ``host``: the remote handoff's
        redirect of it would take that port's new connections."""
        found = self.replica_list()
        taken = {r.port: f"{r.name}'s port" for r in found}
        taken.update({r.green_port: f"{r.name}'s green_port" for r in found})
        for r in found:
            bypass = bypass_of(r.port)
            if bypass in taken:
                # Derived: the step (with the service's ports) made it; named: its own port.
                key = (
                    f"service.replica.{r.name}.port"
                    if self.replica
                    else "service.replica_port_step"
                )
                raise ValueError(
                    f"{key}: on host {host}, {r.name}'s bypass port {bypass} (its port "
                    f"{'+' if bypass > r.port else '-'} 10000, for the remote handoff) is also "
                    f"{taken[bypass]}"
                )
            taken[bypass] = f"{r.name}'s bypass port"

    def on_host(self, host: HostConfig) -> ServiceConfig:
        """The service as ``host``'s keys override its ports and container names."""
        return self.model_copy(
            update={
                "port": host.port or self.port,
                "green_port": host.green_port or self.green_port,
                "name": host.container or self.name,
                "green_name": host.green_container or self.green_name,
            }
        )

    @model_validator(mode="after")
    def _replicas_fit(self) -> ServiceConfig:
        self.replica_list()
        return self


class ImageConfig(_Section):
    name: str = Field(
        description="Image reference to build and run; '{version}' is replaced by the version."
    )
    version_file: Path = Field(description="JSON file holding the version (e.g. package.json).")
    version_key: str = Field("version", description="Key of the version in version_file.")
    tags: list[str] = Field(
        default_factory=list,
        description="More tags (e.g. latest) for the new image: set right before the switch, "
        "moved back to the previous image if the deploy rolls back.",
    )

    @field_validator("tags")
    @classmethod
    def _valid_tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not _TAG.match(tag):
                raise ValueError(f"{tag!r} is not a valid image tag")
        return value

    @field_validator("name")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        try:
            value.format(version="0")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"bad template {value!r}: only {{version}} may be used") from exc
        return value


class BuildConfig(_Section):
    enabled: bool = Field(True, description="Build the image; false expects it to exist.")
    context: Path | None = Field(None, description="Docker build context directory.")
    dockerfile: str = Field("Dockerfile", description="Dockerfile path inside the context.")
    args: dict[str, str] = Field(default_factory=dict, description="Build arguments.")
    command: list[str] | None = Field(
        None,
        min_length=1,
        description="External build command instead of context; '{image}' is replaced.",
    )
    workdir: Path = Field(
        Path("."), description="Where build.command runs (relative to the config file)."
    )
    timeout: PositiveSeconds = Field(900, description="Deadline of the build, in seconds.")
    builder: Literal["auto", "buildkit", "classic"] = Field(
        "auto",
        description="buildkit: the engine's BuildKit through the docker CLI; classic: the "
        "engine API's builder; auto: BuildKit when the CLI can, else classic.",
    )
    docker_cli: str = Field("docker", description="The docker CLI BuildKit builds go through.")
    target: str | None = Field(None, description="Build stage to stop at (--target).")
    pull: bool = Field(False, description="Pull newer base images first (--pull).")
    no_cache: bool = Field(False, description="Build without the layer cache (--no-cache).")
    keep: int = Field(
        3, ge=0, description="Images of this service the tool built to keep; older go. 0: all."
    )

    @model_validator(mode="after")
    def _one_way(self) -> BuildConfig:
        if self.enabled and (self.context is None) == (self.command is None):
            raise ValueError("set exactly one of build.context and build.command")
        return self


class MigrateConfig(_Section):
    commands: list[list[str]] = Field(
        default_factory=list, description="Commands run in order in a one-off container."
    )
    timeout: PositiveSeconds = Field(600, description="Deadline of each migration command.")
    stop_timeout: int = Field(
        10,
        ge=0,
        le=3600,
        description="Seconds between SIGTERM and SIGKILL when a migration is interrupted.",
    )
    blue_check: list[str] = Field(
        default_factory=list,
        description="Run after the migrations in a one-off container of blue's image: exit 0 "
        "says blue could boot again on the migrated schema. A failure means a rollback after "
        "the switch cannot restart blue (said in the log and by plan; exit 3 if it comes to "
        "that). Empty: no check, blue is assumed bootable.",
    )

    @field_validator("commands")
    @classmethod
    def _non_empty(cls, value: list[list[str]]) -> list[list[str]]:
        if any(not command for command in value):
            raise ValueError("a migration command must not be empty")
        return value


class GreenConfig(_Section):
    env: EnvMap = Field(
        default_factory=dict,
        repr=False,
        description="Env overrides for green only, while it runs beside blue.",
    )


class HealthConfig(_Section):
    path: str = Field("/health", description="Health endpoint path.")
    expect_status: int = Field(200, ge=100, le=599, description="HTTP status that counts.")
    expect_json: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="Fields (dotted paths) the JSON body must have, with these values.",
    )
    version_field: str | None = Field(
        "version",
        description="Dotted path of the version in the answer of version_path; empty to skip.",
    )
    version_path: str = Field(
        "",
        description="Endpoint that carries the version (Brain: /api/brain/hardening/status); "
        "empty: the health answer itself.",
    )
    docker: Literal["ignore", "fail-unhealthy", "require-healthy"] = Field(
        "fail-unhealthy",
        description="Docker's own healthcheck (image or compose): an unhealthy green or "
        "production fails the deploy; require-healthy also waits for healthy.",
    )
    interval: PositiveSeconds = Field(5.0, description="Seconds between green health probes.")
    attempts: int = Field(12, ge=1, le=10_000, description="Probes before green counts as dead.")
    request_timeout: PositiveSeconds = Field(2.0, description="Deadline of one HTTP probe.")
    max_body_bytes: int = Field(65_536, ge=64, description="Larger answers count as unhealthy.")


class TickConfig(_Section):
    enabled: bool = Field(True, description="Wait for blue's tick boundary before switching.")
    path: str = Field("/api/brain/tick/status", description="Tick status endpoint path.")
    interval: PositiveSeconds = Field(0.5, description="Seconds between tick status polls.")
    timeout: PositiveSeconds = Field(300, description="Deadline for a safe tick boundary.")
    settle: Seconds = Field(10, description="Seconds to wait after the tick ends (0 allowed).")
    guard: Seconds = Field(
        5, description="No switch starts when next_tick is less than this many seconds away."
    )
    overdue: PositiveSeconds = Field(
        30,
        description="A next_tick this many seconds in the past is stale (said once); from "
        "then on only tick_running decides.",
    )


class VerifyConfig(_Section):
    interval: PositiveSeconds = Field(0.02, description="Seconds between production probes.")
    timeout: PositiveSeconds = Field(30, description="Deadline for production to serve.")
    soak: Seconds = Field(
        5,
        description="Seconds production stays watched after it first serves, blue kept; 0: none.",
    )
    soak_interval: PositiveSeconds = Field(
        0.5, description="Seconds between health probes of production during the soak."
    )


def bad_share(share: int) -> str | None:
    """Why ``share`` cannot be a step of the gradual shift (the percent of new connections
    sent to green), or ``None``: the one rule, for the config and the redirect alike."""
    return None if 1 <= share <= 100 else f"{share} is not a percent 1..100"


class SwitchConfig(_Section):
    mode: Literal["handoff", "restart"] = Field(
        "handoff",
        description="handoff: nftables moves production's port to green while blue is "
        "replaced (zero failed requests; falls back to restart, saying why, without root "
        "and nftables, or off the host network without production's port published); "
        "restart: stop blue, start the new one.",
    )
    drain: Seconds = Field(
        2.0,
        description="Seconds green keeps serving the connections it took, after the handoff "
        "ends, before it is stopped.",
    )
    drain_timeout: Seconds = Field(
        6.0,
        description="With the handoff, seconds to wait before blue's SIGTERM until blue holds no "
        "established connection on the production port (requests in flight finish, idle "
        "keep-alive connections are closed by the server's own timeout: Node's is 5 s); "
        "0: stop blue at once.",
    )
    drain_signal: str | None = Field(
        None,
        description="With the handoff, once new connections reach green and before the wait "
        "for blue's connections: a signal (e.g. SIGUSR2) sent to blue through the engine, for "
        "a service that then closes its idle keep-alive connections and answers "
        "Connection: close. The Brain has none (an unhandled SIGUSR2 ends a Node process). "
        "A failure is logged and the wait goes on. None: no signal.",
    )
    drain_request: str | None = Field(
        None,
        description="Like drain_signal, an HTTP request to blue's own port (past the "
        "redirect): 'METHOD /path', optionally followed by the status that counts as done "
        "(default 200), e.g. 'POST /admin/drain 204'. Sent after drain_signal; a failure is "
        "logged and the wait goes on. None: no request.",
    )
    steps: list[int] = Field(
        default_factory=lambda: [100],
        description="With the handoff (refused with mode = 'restart'; skipped, said, when the "
        "handoff falls back or on a first deploy), the gradual shift: percent of new "
        "connections sent to "
        "green at each step, strictly increasing, each 1..100, the last 100 (the handoff "
        "itself). [100]: no shift, straight to the handoff.",
    )
    step_hold: PositiveSeconds = Field(
        30,
        description="Seconds each step below 100 is held while its gate is checked (the "
        "holds count against limits.two_containers); above 0: a step not held is not gated.",
    )
    gate_interval: PositiveSeconds = Field(
        0.2,
        description="Seconds between the gate's probes: one through production's port as a "
        "client's (split by the share), one of green's own port.",
    )
    gate_metrics_url: str | None = Field(
        None,
        description="Optional: an HTTP endpoint answering a number (error rate, latency), "
        "read at the end of each step's hold; above gate_metrics_max, or unreadable, the "
        "gate fails. None: no metrics gate.",
    )
    gate_metrics_max: float | None = Field(
        None, description="The bound of gate_metrics_url's number (required with it)."
    )
    gate_memory_mb: float | None = Field(
        None,
        gt=0,
        description="Green's memory bar in MiB during the shift; None: limits.green_memory_mb.",
    )

    @field_validator("steps")
    @classmethod
    def _valid_steps(cls, value: list[int]) -> list[int]:
        if not value or value[-1] != 100:
            raise ValueError(f"{value}: the last step must be 100 (every connection to green)")
        for share in value:
            if why := bad_share(share):
                raise ValueError(f"{value}: {why}")
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"{value}: the steps must be strictly increasing")
        return value

    @field_validator("gate_metrics_url")
    @classmethod
    def _valid_metrics_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            # Not echoed: the value may carry a password (config errors name keys only).
            raise ValueError("not an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _shift_needs_the_handoff(self) -> SwitchConfig:
        if self.mode == "restart" and self.shares:
            # Skipped at every deploy: the shift is a share of the handoff's redirect.
            raise ValueError(
                "steps: a gradual shift needs mode = 'handoff' (restart has no redirect to "
                "share); set steps = [100] or mode = 'handoff'"
            )
        return self

    @model_validator(mode="after")
    def _metrics_bounded(self) -> SwitchConfig:
        if (self.gate_metrics_url is None) != (self.gate_metrics_max is None):
            raise ValueError(
                "gate_metrics_url and gate_metrics_max go together: the number and its bound"
            )
        return self

    @property
    def shares(self) -> list[int]:
        """The steps of the gradual shift held below 100 (none: no shift)."""
        return self.steps[:-1]

    @field_validator("drain_signal")
    @classmethod
    def _valid_signal(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.upper() if value.upper().startswith("SIG") else f"SIG{value.upper()}"
        if name not in signal.Signals.__members__ or name.startswith(("SIG_", "SIGRT")):
            raise ValueError(f"{value!r} is not a signal name (e.g. SIGUSR2)")
        if name in ("SIGKILL", "SIGSTOP"):
            # Neither can be handled: one stops blue without its grace, the other freezes it.
            raise ValueError(f"{name} cannot be handled by blue; use a signal it can catch")
        return name

    @field_validator("drain_request")
    @classmethod
    def _valid_request(cls, value: str | None) -> str | None:
        if value is not None:
            drain_request_parts(value)
        return value

    @property
    def drain_action(self) -> ActionConfig | None:
        """``drain_request`` as the lifecycle action that carries it out: blue's, optional
        (its failure is logged); the switch bounds it by ``drain_timeout``."""
        if self.drain_request is None:
            return None
        method, path, status = drain_request_parts(self.drain_request)
        return ActionConfig(
            name="switch.drain_request",
            moment="before-switch",
            target="blue",
            method=method,
            path=path,
            expect_status=status,
            optional=True,
        )


def drain_request_parts(line: str) -> tuple[Method, str, int]:
    """``'POST /admin/drain [204]'`` as its method, path and the status that counts as done."""
    words = line.split()
    methods: tuple[Method, ...] = get_args(Method)
    if len(words) not in (2, 3) or words[0] not in methods or not words[1].startswith("/"):
        raise ValueError(
            f"{line!r} is not 'METHOD /path' or 'METHOD /path STATUS' "
            f"(METHOD one of {', '.join(methods)})"
        )
    status = 200
    if len(words) == 3:
        if not (words[2].isdigit() and 100 <= int(words[2]) <= 599):
            raise ValueError(f"{line!r}: the status {words[2]!r} is not 100..599")
        status = int(words[2])
    method = next(m for m in methods if m == words[0])
    return method, words[1], status


class LimitsConfig(_Section):
    two_containers: PositiveSeconds = Field(
        300, description="Seconds blue and green may run side by side; past it, roll back."
    )
    green_memory_mb: float = Field(
        500, ge=0, description="Green's memory bar in MiB (without page cache); 0: no check."
    )


class StateConfig(_Section):
    dir: Path | None = Field(
        None,
        description="Directory of the lock and journal of each service on this host "
        "(relative to the config file); default: /var/lib/rolling-update as root, "
        "else $XDG_STATE_HOME/rolling-update.",
    )


class EngineConfig(_Section):
    call_timeout: PositiveSeconds = Field(
        15,
        description="Seconds any Docker engine call may go unanswered (a hung or overloaded "
        "engine) before it fails; a stop gets service.stop_timeout on top, and a stream "
        "(logs, events, a build) this long for its first answer.",
    )


class RollbackConfig(_Section):
    step_timeout: PositiveSeconds = Field(30, description="Deadline of each compensation.")
    timeout: PositiveSeconds = Field(
        60, description="Deadline of the whole rollback (all compensations together)."
    )


class SecretsConfig(_Section):
    keys: list[str] = Field(
        default_factory=list,
        description="Env and build-arg keys whose values are secret, besides those that "
        "look secret by name.",
    )
    public: list[str] = Field(
        default_factory=list,
        description="Keys whose values are never treated as secret, even if they look it.",
    )


class HooksConfig(_Section):
    pre_build: str | None = Field(
        None, description="Shell command before the build; failing, nothing is changed."
    )
    pre_deploy: str | None = Field(
        None, description="Shell command before the first change; failing, nothing is changed."
    )
    post_deploy: str | None = Field(None, description="Shell command after a deploy that serves.")
    post_rollback: str | None = Field(
        None, description="Shell command after a deploy that was rolled back or interrupted."
    )
    timeout: PositiveSeconds = Field(300, description="Deadline of each hook, in seconds.")


class MetricsConfig(_Section):
    textfile: Path | None = Field(
        None,
        description="Prometheus text file (node_exporter's textfile collector), rewritten "
        "atomically after every run; none: no metrics. With [[hosts]], one file per host "
        "(NAME-HOST.prom), each series labelled host=HOST.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels added to every series (e.g. a region)."
    )


class HostConfig(_Section):
    """One Docker host the service runs on; the first in the list is the canary."""

    name: str = Field(description="The host's name, in logs, state and --host.")
    engine: str = Field(
        "unix:///var/run/docker.sock",
        description="Engine address: unix:///path, tcp://host:port (TLS with cert_path), "
        "or ssh://[user@]host[:port] (the remote engine socket forwarded over SSH; the "
        "user's ~/.ssh/config, known_hosts and agent are used).",
    )
    cert_path: Path | None = Field(
        None,
        description="tcp://: directory with ca.pem, cert.pem and key.pem (as DOCKER_CERT_PATH); "
        "the engine's certificate is verified against ca.pem.",
    )
    socket: str = Field(
        "/var/run/docker.sock", description="ssh://: the engine's socket on the remote host."
    )
    ssh_config: Path | None = Field(
        None, description="ssh://: OpenSSH client config to read instead of ~/.ssh/config."
    )
    probe: Literal["direct", "ssh"] = Field(
        "direct",
        description="direct: probe the service at address; ssh: through the engine's SSH "
        "connection, at the remote host's loopback.",
    )
    address: str | None = Field(
        None,
        description="Address the service is probed at (direct); default: the engine "
        "address's host, or service.host for unix://.",
    )
    env: EnvMap = Field(
        default_factory=dict, repr=False, description="Env for this host, on top of [env]."
    )
    port: Port | None = Field(None, description="service.port on this host.")
    green_port: Port | None = Field(None, description="service.green_port on this host.")
    container: str | None = Field(None, description="service.name on this host.")
    green_container: str | None = Field(None, description="service.green_name on this host.")
    bypass_port: Port | None = Field(
        None,
        description="Remote handoff: while production's port is redirected, the tool reaches "
        "the real production port through this one; default: port + 10000 (or - 10000). "
        "With replicas it is each replica's own port + 10000, and not set.",
    )
    helper_image: str | None = Field(
        None,
        description="Remote handoff: an image with nft (and cat, to count blue's connections "
        "before its SIGTERM) for the helper containers, which then run its own tools without "
        "the host's root mounted; default: blue's image, running the host's through chroot.",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}", value):
            raise ValueError(f"{value!r} is not a valid host name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
        return value

    @field_validator("engine")
    @classmethod
    def _valid_engine(cls, value: str) -> str:
        if not re.match(r"^(unix|tcp|ssh)://.", value):
            raise ValueError(f"{value!r}: use unix://, tcp:// or ssh://")
        return value

    @property
    def local(self) -> bool:
        """Whether the engine (and so the handoff's nftables) is this machine's."""
        return self.engine.startswith("unix://")


class RolloutConfig(_Section):
    parallel: int = Field(
        1, ge=1, le=100, description="Hosts updated at a time after the canary (the first)."
    )
    on_failure: Literal["stop", "rollback-all"] = Field(
        "stop",
        description="When a host fails (it rolls back itself): stop leaves the hosts already "
        "updated on the new version; rollback-all takes them back too.",
    )
    migrate: Literal["once", "per-host"] = Field(
        "once",
        description="once: migrations run on the canary, before any switch (a shared "
        "database); per-host: on every host.",
    )
    distribute: Literal["stream", "registry"] = Field(
        "stream",
        description="How the image built on the canary reaches the other hosts: stream "
        "(save into each engine's load, no registry) or registry (push once, each host "
        "pulls; image.name must start with the registry's host).",
    )
    connect_timeout: PositiveSeconds = Field(
        20, description="Deadline for reaching each host's engine (SSH included)."
    )
    distribute_timeout: PositiveSeconds = Field(
        900, description="Deadline for copying the image to one host."
    )
    revert_timeout: PositiveSeconds = Field(
        600,
        description="rollback-all: deadline of taking one updated host back (it runs even "
        "after Ctrl-C, shielded, within this).",
    )


Moment = Literal[
    "green-answers",
    "green-healthy",
    "before-switch",
    "production-answers",
    "rollback",
    "after-soak",
]
Target = Literal["blue", "green", "production"]
JsonScalar = str | int | float | bool


class FieldRule(_Section):
    path: str = Field(description="Endpoint read (GET) on the same target.")
    field: str = Field(description="Dotted path of a field in its JSON answer.")
    equals: JsonScalar = Field(description="The value the field must have.")


class WaitRule(FieldRule):
    interval: PositiveSeconds = Field(0.5, description="Seconds between polls.")
    timeout: PositiveSeconds = Field(60, description="Deadline of the wait.")


class ActionConfig(_Section):
    """An HTTP call the deploy makes at a named moment, against a named container."""

    name: str = Field(description="What the action does, for the log.")
    moment: Moment = Field(
        description="green-answers (green's first HTTP answer), green-healthy, before-switch "
        "(after blue's tick boundary, before its SIGTERM), production-answers (the new "
        "production container's first HTTP answer, past the handoff's redirect, before the "
        "port is given back to it), rollback (when the deploy rolls back past before-switch), "
        "after-soak (the new version is committed)."
    )
    target: Target = Field(
        description="Whose port: blue (production's, before the switch), "
        "green, or production (after the switch)."
    )
    method: Method = Field("POST", description="Method.")
    path: str = Field(description="Path of the call.")
    body: dict[str, Any] | None = Field(None, description="JSON body, if any.")
    expect_status: int = Field(200, ge=100, le=599, description="Status that counts as done.")
    wait: WaitRule | None = Field(None, description="Then wait until a field reaches a value.")
    unless: FieldRule | None = Field(
        None, description="Skip the call when a GET on the same target shows this value."
    )
    optional: bool = Field(False, description="A failure is logged, not a reason to roll back.")
    timeout: PositiveSeconds = Field(10, description="Deadline of the call itself.")
    replicas: Literal["all", "tick", "others"] = Field(
        "all",
        description="With several replicas, whose deploy makes the call: all, the one that "
        "owns the tick loop (service.tick_replica), or the others. One replica: it owns it.",
    )

    def made_by(self, *, owns_tick: bool) -> bool:
        """Whether a deploy makes this call, by whether its production owns the tick loop (a
        service of one container does): the one rule of ``replicas``."""
        return self.replicas in ("all", "tick" if owns_tick else "others")

    @model_validator(mode="after")
    def _target_exists_then(self) -> ActionConfig:
        if (self.target == "production") != (self.moment in ("production-answers", "after-soak")):
            raise ValueError(
                "target production exists only from its first answer: use moment "
                "production-answers or after-soak with it, and blue or green before"
            )
        if self.moment in ("green-answers", "green-healthy") and self.target == "production":
            raise ValueError("no production container exists while green warms up")
        return self


class Config(_Section):
    service: ServiceConfig
    image: ImageConfig
    build: BuildConfig = Field(default_factory=lambda: BuildConfig(enabled=False))
    migrate: MigrateConfig = Field(default_factory=MigrateConfig)
    env: EnvMap = Field(
        default_factory=dict,
        repr=False,
        description="Env for every container; ${VAR:-default} is expanded from the tool's env.",
    )
    green: GreenConfig = Field(default_factory=GreenConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    tick: TickConfig = Field(default_factory=TickConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    switch: SwitchConfig = Field(default_factory=SwitchConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    rollback: RollbackConfig = Field(default_factory=RollbackConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    secrets: SecretsConfig = Field(default_factory=SecretsConfig)
    hooks: HooksConfig = Field(default_factory=HooksConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    actions: list[ActionConfig] = Field(
        default_factory=list, description="HTTP calls at named moments of the deploy."
    )
    hosts: list[HostConfig] = Field(
        default_factory=list,
        description="Docker hosts, canary first; none: the local engine (DOCKER_HOST).",
    )
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)

    @model_validator(mode="after")
    def _registry_named(self) -> Config:
        if self.rollout.distribute == "registry" and registry_of(self.image.name) is None:
            raise ValueError(
                "rollout.distribute = registry: image.name must start with the registry's host "
                f"(registry.example.com/name:{{version}}), not {self.image.name!r}"
            )
        return self

    @model_validator(mode="after")
    def _engine_call_fits_an_undo(self) -> Config:
        if self.engine.call_timeout >= self.rollback.step_timeout:
            raise ValueError(
                f"engine.call_timeout ({self.engine.call_timeout:g}) must be shorter than "
                f"rollback.step_timeout ({self.rollback.step_timeout:g}): an undo must outlast "
                "an engine call that goes unanswered, to try again"
            )
        return self

    @model_validator(mode="after")
    def _shift_fits(self) -> Config:
        holds = len(self.switch.shares) * self.switch.step_hold
        if holds and holds >= self.limits.two_containers:
            raise ValueError(
                f"switch.step_hold: {len(self.switch.shares)} step(s) held "
                f"{self.switch.step_hold:g}s each ({holds:g}s) do not fit in "
                f"limits.two_containers ({self.limits.two_containers:g}s), which also "
                "holds green's warm-up, the tick wait and blue's stop"
            )
        return self

    @model_validator(mode="after")
    def _hosts_distinct(self) -> Config:
        names = [h.name for h in self.hosts]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"hosts: the name {name!r} is used twice")
        for h in self.hosts:
            port = h.port or self.service.port
            if port == (h.green_port or self.service.green_port):
                raise ValueError(f"hosts.{h.name}: port and green_port are both {port}")
            if h.bypass_port is not None and h.bypass_port in (
                port,
                h.green_port or self.service.green_port,
            ):
                raise ValueError(f"hosts.{h.name}: bypass_port must differ from both ports")
            for key in ("port", "green_port", "container", "green_container"):
                if self.service.replica and getattr(h, key) is not None:
                    # Named replicas carry their own ports and names, on every host.
                    raise ValueError(
                        f"hosts.{h.name}.{key}: [[service.replica]] name each replica's "
                        "ports and containers on every host; leave it unset"
                    )
            if h.green_container is not None and self.service.replicated:
                # Derived greens are NAME-i-green, from the host's container.
                raise ValueError(
                    f"hosts.{h.name}.green_container: replica i's green is CONTAINER-i-green; "
                    "leave it unset"
                )
            if h.bypass_port is not None and self.service.replicated:
                # Taken silently it would do nothing: each replica has a port of its own.
                raise ValueError(
                    f"hosts.{h.name}.bypass_port: with replicas each replica's is its own "
                    "port + 10000 (or - 10000); leave it unset"
                )
        return self

    @model_validator(mode="after")
    def _bypass_ports_free(self) -> Config:
        for h in self.hosts:
            # Only a remote host's handoff redirects a bypass port (here, probes carry a mark).
            if self.service.replicated and not h.local:
                self.service.on_host(h).check_bypass_ports(h.name)
        return self

    def actions_at(self, moment: Moment) -> list[ActionConfig]:
        """The calls at ``moment``. A service of one container owns the tick loop: the
        calls meant for the other replicas are not its (a replica's config is made with
        its own calls only, by the rollout)."""
        return [a for a in self.actions if a.moment == moment and a.made_by(owns_tick=True)]

    @property
    def state_dir(self) -> Path:
        """This service's own state directory on this host."""
        return (self.state.dir or default_state_dir()) / self.service.name


def registry_of(image: str) -> str | None:
    """The registry host an image reference names, as Docker reads it, or ``None``."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Per host, never per checkout: two checkouts of one service must share it."""
    environ = os.environ if environ is None else environ
    if os.geteuid() == 0:
        return Path("/var/lib/rolling-update")
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "rolling-update"


def expand(value: str, environ: Mapping[str, str], *, key: str) -> str:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$`` the way compose files do."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        found = environ.get(name)
        if found:
            return found
        if default is not None:
            return default
        raise ConfigError(f"${{{name}}} is not set and has no default", key=key)

    return _EXPANSION.sub(substitute, value)


def _format_validation(exc: pydantic.ValidationError) -> str:
    # Our own wording, because pydantic's repeats the input value, and an env
    # value may be a secret.
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in error["loc"]) or "(top level)"
        parts.append(f"{loc}: {error['msg']}")
    return "; ".join(parts)


def parse_config(
    data: Mapping[str, Any], *, base_dir: Path, environ: Mapping[str, str], source: str
) -> Config:
    """Validate parsed TOML; resolve paths against ``base_dir`` and expand env values."""
    try:
        cfg = Config.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(_format_validation(exc), source=source) from None

    def resolve(path: Path | None) -> Path | None:
        return None if path is None else (base_dir / path).resolve()

    try:
        env = {k: expand(v, environ, key=f"env.{k}") for k, v in cfg.env.items()}
        green_env = {k: expand(v, environ, key=f"green.env.{k}") for k, v in cfg.green.env.items()}
        host_env = {
            h.name: {k: expand(v, environ, key=f"hosts.{h.name}.env.{k}") for k, v in h.env.items()}
            for h in cfg.hosts
        }
    except ConfigError as exc:
        raise ConfigError(str(exc), source=source) from None
    return cfg.model_copy(
        update={
            "env": env,
            "green": cfg.green.model_copy(update={"env": green_env}),
            "service": cfg.service.model_copy(update={"env_file": resolve(cfg.service.env_file)}),
            "image": cfg.image.model_copy(update={"version_file": resolve(cfg.image.version_file)}),
            "build": cfg.build.model_copy(
                update={
                    "context": resolve(cfg.build.context),
                    "workdir": resolve(cfg.build.workdir),
                }
            ),
            "metrics": cfg.metrics.model_copy(update={"textfile": resolve(cfg.metrics.textfile)}),
            "hosts": [
                h.model_copy(
                    update={
                        "cert_path": resolve(h.cert_path),
                        "ssh_config": resolve(h.ssh_config),
                        "env": host_env[h.name],
                    }
                )
                for h in cfg.hosts
            ],
            "state": cfg.state.model_copy(
                update={"dir": resolve(cfg.state.dir) or default_state_dir(environ)}
            ),
        }
    )


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate the config file at ``path``."""
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror or exc}", source=source) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config is not UTF-8 text", source=source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", source=source) from None
    return parse_config(
        data,
        base_dir=path.resolve().parent,
        environ=os.environ if environ is None else environ,
        source=source,
    )


def read_version(cfg: ImageConfig) -> str:
    """The version in ``version_file`` under ``version_key``."""
    source = str(cfg.version_file)
    try:
        data = json.loads(cfg.version_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"cannot read version file: {exc.strerror or exc}", source=source
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"version file is not JSON: {exc}", source=source) from None
    version = data.get(cfg.version_key) if isinstance(data, dict) else None
    if not isinstance(version, str) or not re.fullmatch(
        r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}", version
    ):
        raise ConfigError(
            "missing, or not usable as an image tag", source=source, key=cfg.version_key
        )
    return version


def read_env_file(path: Path, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parse a file in ``docker run --env-file`` format.

    Like Docker: no quote handling, ``#`` starts a comment line, and a bare
    ``NAME`` takes its value from the environment (and is dropped when unset).
    """
    environ = os.environ if environ is None else environ
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read env file: {exc.strerror or exc}", source=source) from None
    except UnicodeDecodeError:
        raise ConfigError("env file is not UTF-8 text", source=source) from None
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        if not _ENV_NAME.match(name):
            # The value is not quoted in the message: it may be a secret.
            raise ConfigError(f"line {number}: invalid variable name", source=source)
        if sep:
            env[name] = value
        elif name in environ:
            env[name] = environ[name]
    return env
