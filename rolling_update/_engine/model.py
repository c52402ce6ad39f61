"""What the tool asks of a container engine, as values: specs, what it answers, the labels.

Steps describe containers with :class:`ContainerSpec` (a value, tested by
equality) and act through the :class:`Engine` protocol;
:class:`rolling_update._engine.docker.DockerEngine` implements it on aiodocker,
:class:`rolling_update.testing.FakeEngine` in memory. Our containers are known
by their labels, never by parsing names.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

LABEL_MANAGED_PREFIX = "io.rolling-update."


LABEL_MANAGED = "io.rolling-update.managed"


LABEL_CONFIG_ENV = "io.rolling-update.config-env"
"""Env keys the tool set from its config: a twin of this container drops them first."""


LABEL_ROLE = "io.rolling-update.role"


LABEL_SERVICE = "io.rolling-update.service"


LABEL_DEPLOY = "io.rolling-update.deploy-id"


LABEL_VERSION = "io.rolling-update.version"


LABEL_IMAGE = "io.rolling-update.image"


LABEL_MARKER_PID = "io.rolling-update.pid"


LABEL_MARKER_HOST = "io.rolling-update.host"


LABEL_MARKER_SINCE = "io.rolling-update.since"


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one container; ``to_api`` is the Docker JSON.

    ``base`` is the rest of a create body (blue's twin: ``HostConfig`` and
    Config fields); the named fields are laid over it. ``networks`` are
    user-defined networks to join, with aliases there.
    """

    name: str
    image: str
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    command: Sequence[str] | None = None
    network: str = "host"
    restart: str = "unless-stopped"
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_timeout: int | None = None
    base: Mapping[str, Any] = field(default_factory=dict, repr=False)
    networks: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def to_api(self) -> dict[str, Any]:
        config: dict[str, Any] = copy.deepcopy(dict(self.base))
        host_config: dict[str, Any] = config.setdefault("HostConfig", {})
        host_config["NetworkMode"] = self.network
        retries = (host_config.get("RestartPolicy") or {}).get("MaximumRetryCount", 0)
        host_config["RestartPolicy"] = {
            "Name": self.restart,
            "MaximumRetryCount": retries if self.restart == "on-failure" else 0,
        }
        config.update(
            Image=self.image,
            Env=[f"{k}={v}" for k, v in self.env.items()],
            Labels=dict(self.labels),
        )
        if self.command is not None:
            config["Cmd"] = list(self.command)
        if self.stop_timeout is not None and "StopTimeout" not in config:
            config["StopTimeout"] = self.stop_timeout
        if self.network in self.networks:
            # One network at create (API 1.41); the others are joined before start.
            aliases = list(self.networks[self.network])
            config["NetworkingConfig"] = {"EndpointsConfig": {self.network: {"Aliases": aliases}}}
        return config


@dataclass(frozen=True)
class ContainerInfo:
    """What the tool needs to know of an existing container."""

    id: str
    name: str
    image: str
    running: bool
    status: str
    labels: Mapping[str, str]
    restart_count: int
    exit_code: int
    created: float  # unix time, nanosecond precision where the engine gives it
    image_id: str = ""
    """The id (sha256:...) of the image it runs, whatever tag it was created from."""
    health: str | None = None
    """Docker's own healthcheck status (starting, healthy, unhealthy), if it has one."""
    oom_killed: bool = False
    """Whether the kernel killed it for going past its memory limit (until it starts again)."""
    restart: str = "no"
    """Its restart policy's name (``no``, ``always``, ``unless-stopped``, ``on-failure``)."""

    @property
    def managed(self) -> bool:
        return self.labels.get(LABEL_MANAGED) == "true"

    @property
    def up(self) -> bool:
        """Running, and not between its restart policy's attempts (the engine says such a
        container runs, though it is crash-looping, with no network sandbox)."""
        return self.running and self.status != "restarting"


@dataclass(frozen=True)
class BuildOptions:
    """``docker build`` flags besides the context, Dockerfile, tag and build args."""

    target: str | None = None
    pull: bool = False
    no_cache: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageInfo:
    id: str
    tags: list[str]
    created: float


@dataclass(frozen=True)
class ContainerEvent:
    """One engine event of a container: ``die``, ``start``, ``oom``, ``restart``..."""

    action: str
    container_id: str
    time_nano: int
    exit_code: int | None = None


class Engine(Protocol):
    """Everything the tool asks of a container engine: the steps, the preflight and
    ``recover``, the image copy of a rollout (export into load, or push and pull), and the
    one-off helper containers of the remote handoff."""

    async def ping(self) -> None: ...
    async def image_exists(self, ref: str) -> bool: ...
    async def image_id(self, ref: str) -> str | None: ...
    async def build_image(
        self,
        context: Path,
        *,
        dockerfile: str,
        tag: str,
        args: Mapping[str, str],
        on_line: Callable[[str], None],
        options: BuildOptions = BuildOptions(),
    ) -> None: ...
    async def remove_image(self, ref: str) -> None: ...
    # A rollout's image copy: save into load, or push once and pull on each host.
    def export_image(self, ref: str) -> AsyncGenerator[bytes, None]: ...
    async def load_image(self, chunks: AsyncIterator[bytes]) -> None: ...
    async def push_image(
        self, ref: str, *, auth: str, on_status: Callable[[str], None] | None = None
    ) -> None: ...
    async def pull_image(
        self, ref: str, *, auth: str, on_status: Callable[[str], None] | None = None
    ) -> None: ...
    # A short-lived container run to its end (the remote handoff's helpers): exit code
    # and output, the container removed after.
    async def run_once(self, spec: ContainerSpec, *, limit: float = ...) -> tuple[int, str]: ...
    async def tag_image(self, source: str, target: str) -> None: ...
    async def list_images(
        self, labels: Mapping[str, str], *, reference: str | None = None
    ) -> list[ImageInfo]: ...
    async def claim_marker(self, name: str, labels: Mapping[str, str]) -> dict[str, str]: ...
    async def read_marker(self, name: str) -> dict[str, str] | None: ...
    async def remove_marker(self, name: str) -> None: ...
    async def inspect(self, name_or_id: str) -> ContainerInfo | None: ...
    async def inspect_raw(self, name_or_id: str) -> dict[str, Any] | None: ...
    async def image_config(self, ref: str) -> dict[str, Any]: ...
    async def list_ids(self, labels: Mapping[str, str]) -> list[str]: ...
    async def create(self, spec: ContainerSpec) -> str: ...
    async def start(self, container_id: str) -> None: ...
    async def stop(self, container_id: str, *, grace: int) -> None: ...
    async def kill(self, container_id: str, signal: str) -> None: ...
    async def remove(self, container_id: str) -> None: ...
    async def rename(self, container_id: str, name: str) -> None: ...
    async def wait(self, container_id: str) -> int: ...
    async def follow_logs(
        self,
        container_id: str,
        on_line: Callable[[str], Awaitable[None]],
        *,
        replay: bool = True,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None: ...
    async def watch_memory(
        self,
        container_id: str,
        on_sample: Callable[[int], Awaitable[None]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None: ...
    async def watch_events(
        self,
        container_id: str,
        since_nano: int,
        on_event: Callable[[ContainerEvent], Awaitable[None]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None: ...


def split_reference(ref: str) -> tuple[str, str]:
    """``registry:5000/repo:tag`` into ``("registry:5000/repo", "tag")`` (default latest)."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return name, tag
