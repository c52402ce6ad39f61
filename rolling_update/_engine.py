"""The Docker seam: pure container specs, and the one class that talks to Docker.

Steps describe containers with :class:`ContainerSpec` (a value, tested by
equality) and act through the :class:`Engine` protocol. :class:`DockerEngine`
implements it on aiodocker and is the only place aiodocker and its errors are
seen; :class:`rolling_update.testing.FakeEngine` implements it in memory.

Streaming calls (log follow, events) each get a client of their own that is
closed when the stream ends: cancelling a streaming call in aiodocker 0.27
leaks its pooled connection, and enough leaks make every later call hang.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tarfile
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aiodocker
import aiohttp
import anyio
from anyio.abc import TaskStatus

from ._errors import BuildFailed, EngineError, EngineUnavailable

LABEL_MANAGED = "io.rolling-update.managed"
LABEL_ROLE = "io.rolling-update.role"
LABEL_SERVICE = "io.rolling-update.service"
LABEL_DEPLOY = "io.rolling-update.deploy-id"
LABEL_VERSION = "io.rolling-update.version"

_CLOSE_LIMIT = 5.0
# An engine that takes longer than this to create, start, rename or remove a
# container is not coming back; stop gets its grace period on top.
_MUTATION_LIMIT = 60.0


@dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to create one container; ``to_api`` is the Docker JSON."""

    name: str
    image: str
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    command: Sequence[str] | None = None
    network: str = "host"
    restart: str = "unless-stopped"
    labels: Mapping[str, str] = field(default_factory=dict)
    stop_timeout: int | None = None

    def to_api(self) -> dict[str, Any]:
        host_config: dict[str, Any] = {
            "NetworkMode": self.network,
            "RestartPolicy": {"Name": self.restart},
        }
        config: dict[str, Any] = {
            "Image": self.image,
            "Env": [f"{k}={v}" for k, v in self.env.items()],
            "Labels": dict(self.labels),
            "HostConfig": host_config,
        }
        if self.command is not None:
            config["Cmd"] = list(self.command)
        if self.stop_timeout is not None:
            config["StopTimeout"] = self.stop_timeout
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

    @property
    def managed(self) -> bool:
        return self.labels.get(LABEL_MANAGED) == "true"


@dataclass(frozen=True)
class ContainerEvent:
    """One engine event of a container: ``die``, ``start``, ``oom``, ``restart``..."""

    action: str
    container_id: str
    time_nano: int
    exit_code: int | None = None


class Engine(Protocol):
    """What steps need from a container engine."""

    async def ping(self) -> None: ...
    async def image_exists(self, ref: str) -> bool: ...
    async def build_image(
        self,
        context: Path,
        *,
        dockerfile: str,
        tag: str,
        args: Mapping[str, str],
        on_line: Callable[[str], None],
    ) -> None: ...
    async def remove_image(self, ref: str) -> None: ...
    async def inspect(self, name_or_id: str) -> ContainerInfo | None: ...
    async def list_ids(self, labels: Mapping[str, str]) -> list[str]: ...
    async def create(self, spec: ContainerSpec) -> str: ...
    async def start(self, container_id: str) -> None: ...
    async def stop(self, container_id: str, *, grace: int) -> None: ...
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


def _parse_created(value: str) -> float:
    # The engine gives RFC 3339 with nanoseconds; datetime takes microseconds.
    head, _, frac = value.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    return seconds + (float("0." + frac) if frac else 0.0)


def _info(data: Mapping[str, Any]) -> ContainerInfo:
    state = data.get("State") or {}
    return ContainerInfo(
        id=data["Id"],
        name=str(data.get("Name", "")).lstrip("/"),
        image=str((data.get("Config") or {}).get("Image", "")),
        running=bool(state.get("Running")),
        status=str(state.get("Status", "")),
        labels=dict((data.get("Config") or {}).get("Labels") or {}),
        restart_count=int(data.get("RestartCount") or 0),
        exit_code=int(state.get("ExitCode") or 0),
        created=_parse_created(str(data.get("Created", "1970-01-01T00:00:00Z"))),
    )


def _dockerignore(context: Path) -> list[str]:
    try:
        lines = (context / ".dockerignore").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [ln.strip().strip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def _ignored(relative: str, patterns: Sequence[str]) -> bool:
    # A subset of .dockerignore: globs matched against the path and each of its
    # parents, later "!" lines re-including; enough to keep node_modules out.
    ignored = False
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern[1:] if negate else pattern
        if any(fnmatch.fnmatchcase(p, glob) for p in prefixes):
            ignored = not negate
    return ignored


def build_context_tar(context: Path) -> tempfile.SpooledTemporaryFile[bytes]:
    """Pack ``context`` as a tar, honouring a simple ``.dockerignore``."""
    patterns = _dockerignore(context)
    # Returned open: the caller streams it to the engine, then closes it.
    buffer: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(  # noqa: SIM115
        max_size=32 * 1024 * 1024
    )
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for root, dirs, files in os.walk(context):
            rel_root = os.path.relpath(root, context)
            for name in sorted(files) + sorted(dirs):
                relative = name if rel_root == "." else f"{rel_root}/{name}"
                if _ignored(relative, patterns):
                    if name in dirs:
                        dirs.remove(name)
                    continue
                if name in files:
                    tar.add(os.path.join(root, name), arcname=relative, recursive=False)
            dirs.sort()
    buffer.seek(0)
    return buffer


class DockerEngine:
    """:class:`Engine` on a real Docker engine, through aiodocker.

    Use as an async context manager; every aiodocker/aiohttp error is
    translated here into :class:`EngineError` or :class:`EngineUnavailable`.
    """

    def __init__(self, url: str | None = None) -> None:
        self._url = url
        self._client: aiodocker.Docker | None = None

    async def __aenter__(self) -> DockerEngine:
        self._client = self._new_client()
        try:
            # Also settles the API version, which our streaming URLs need.
            await self.ping()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client is not None:
            with anyio.move_on_after(_CLOSE_LIMIT, shield=True):
                await self._client.close()
            self._client = None

    def _new_client(self) -> aiodocker.Docker:
        try:
            return aiodocker.Docker(url=self._url)
        except (ValueError, AssertionError) as exc:
            raise EngineUnavailable(f"no Docker engine found: {exc}") from exc

    @property
    def client(self) -> aiodocker.Docker:
        if self._client is None:
            raise RuntimeError("DockerEngine is used outside 'async with'")
        return self._client

    @asynccontextmanager
    async def _translate(self, operation: str, target: str) -> AsyncIterator[None]:
        try:
            yield
        except aiodocker.DockerError as exc:
            if exc.status == 900:
                raise EngineUnavailable(f"Docker engine unreachable: {exc.message}") from exc
            raise EngineError(operation, target, exc.status, str(exc.message).strip()) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise EngineUnavailable(f"Docker engine unreachable: {exc}") from exc

    @asynccontextmanager
    async def _mutation(
        self, operation: str, target: str, *, limit: float = _MUTATION_LIMIT
    ) -> AsyncIterator[None]:
        """A call that changes the engine's state: shielded, bounded, translated.

        Cancelling it mid-flight would leave the engine acting on a request we
        no longer know the outcome of (a container created after our undo
        looked for it). Shielded, the caller always learns what happened, and
        the cancellation is delivered at its next checkpoint.
        """
        try:
            with anyio.fail_after(limit, shield=True):
                async with self._translate(operation, target):
                    yield
        except TimeoutError:
            raise EngineError(operation, target, 0, f"no answer within {limit:g}s") from None

    async def ping(self) -> None:
        async with self._translate("version", "engine"):
            await self.client.version()

    async def image_exists(self, ref: str) -> bool:
        try:
            async with self._translate("image inspect", ref):
                await self.client.images.inspect(ref)
        except EngineError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def build_image(
        self,
        context: Path,
        *,
        dockerfile: str,
        tag: str,
        args: Mapping[str, str],
        on_line: Callable[[str], None],
    ) -> None:
        tar = await anyio.to_thread.run_sync(build_context_tar, context)
        try:
            async with self._translate("build", tag):
                stream = self.client.images.build(
                    fileobj=tar,
                    encoding="identity",
                    path_dockerfile=dockerfile,
                    tag=tag,
                    buildargs=dict(args),
                    forcerm=True,
                    stream=True,
                )
                async for chunk in stream:
                    if "error" in chunk:
                        detail = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
                        raise BuildFailed(f"build of {tag} failed: {str(detail).strip()}")
                    text = chunk.get("stream")
                    if isinstance(text, str):
                        for line in text.splitlines():
                            if line.strip():
                                on_line(line.rstrip())
        except EngineError as exc:
            # aiodocker raises the build's own error as a DockerError too.
            raise BuildFailed(f"build of {tag} failed: {exc.detail}") from exc
        finally:
            tar.close()

    async def remove_image(self, ref: str) -> None:
        try:
            async with self._translate("image rm", ref):
                await self.client.images.delete(ref)
        except EngineError as exc:
            if exc.status != 404:
                raise

    async def inspect(self, name_or_id: str) -> ContainerInfo | None:
        try:
            async with self._translate("inspect", name_or_id):
                container = await self.client.containers.get(name_or_id)
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise
        return _info(container._container)

    async def list_ids(self, labels: Mapping[str, str]) -> list[str]:
        """Ids of all containers (running or not) carrying every label given."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        async with self._translate("ps", "containers"):
            found = await self.client.containers.list(all=True, filters=json.dumps(filters))
        return [str(c.id) for c in found]

    async def create(self, spec: ContainerSpec) -> str:
        # create + start, never containers.run(): run() pulls on a missing image.
        async with self._mutation("create", spec.name):
            container = await self.client.containers.create(spec.to_api(), name=spec.name)
        return str(container.id)

    async def start(self, container_id: str) -> None:
        async with self._mutation("start", container_id[:12]):
            await self.client.containers.container(container_id).start()

    async def stop(self, container_id: str, *, grace: int) -> None:
        try:
            async with self._mutation("stop", container_id[:12], limit=grace + _MUTATION_LIMIT):
                await self.client.containers.container(container_id).stop(t=int(grace))
        except EngineError as exc:
            if exc.status not in (304, 404):
                raise

    async def remove(self, container_id: str) -> None:
        try:
            async with self._mutation("rm", container_id[:12]):
                await self.client.containers.container(container_id).delete(force=True)
        except EngineError as exc:
            if exc.status != 404:
                raise

    async def rename(self, container_id: str, name: str) -> None:
        async with self._mutation("rename", f"{container_id[:12]} to {name}"):
            await self.client.containers.container(container_id).rename(name)

    async def wait(self, container_id: str) -> int:
        async with self._translate("wait", container_id[:12]):
            result = await self.client.containers.container(container_id).wait()
        return int(result.get("StatusCode", -1))

    @asynccontextmanager
    async def _stream(
        self, path: str, params: Mapping[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streaming GET whose response is released however the caller leaves.

        aiodocker's own streaming calls never release their response when
        cancelled, so each cancelled follow leaks a pooled connection until
        every later call hangs. ``async with`` on aiohttp's response does not.
        """
        client = self.client
        url = f"{client.docker_host}/{client.api_version}/{path}"
        async with client.session.get(
            url, params=params, timeout=aiohttp.ClientTimeout(total=None, sock_read=None)
        ) as response:
            if response.status >= 400:
                text = (await response.text()).strip()
                raise EngineError(path.split("/")[-1], path, response.status, text)
            yield response

    async def follow_logs(
        self,
        container_id: str,
        on_line: Callable[[str], Awaitable[None]],
        *,
        replay: bool = True,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_line`` for each log line until the container stops or we are cancelled.

        ``replay`` starts with every line since the container started; without
        it, only new lines come.
        """
        async with self._translate("logs", container_id[:12]):
            info = await self.client.containers.get(container_id)
            tty = bool(info._container.get("Config", {}).get("Tty"))
            params = {"stdout": "1", "stderr": "1", "follow": "1", "tail": "all" if replay else "0"}
            async with self._stream(f"containers/{container_id}/logs", params) as response:
                task_status.started()
                lines = LineSplitter()
                frames = FrameDecoder(raw=tty)
                async for chunk in response.content.iter_any():
                    for payload in frames.feed(chunk):
                        for line in lines.feed(payload):
                            await on_line(line)
                for line in lines.flush():
                    await on_line(line)

    async def watch_events(
        self,
        container_id: str,
        since_nano: int,
        on_event: Callable[[ContainerEvent], Awaitable[None]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_event`` for the container's events from ``since_nano`` on.

        ``since`` makes the engine replay what happened before we connected,
        so nothing between the container's start and this call is missed.
        """
        params = {
            "since": f"{since_nano // 1_000_000_000}.{since_nano % 1_000_000_000:09d}",
            "filters": json.dumps({"container": [container_id], "type": ["container"]}),
        }
        async with (
            self._translate("events", container_id[:12]),
            self._stream("events", params) as response,
        ):
            task_status.started()
            async for raw in response.content:
                event = parse_event(raw)
                if event is not None:
                    await on_event(event)

    async def watch_memory(
        self,
        container_id: str,
        on_sample: Callable[[int], Awaitable[None]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_sample`` with the container's memory use, about once a second.

        The stats *stream* answers its first sample at once; a one-shot stats
        call costs 1-2 s each on this engine.
        """
        params = {"stream": "1"}
        async with (
            self._translate("stats", container_id[:12]),
            self._stream(f"containers/{container_id}/stats", params) as response,
        ):
            task_status.started()
            async for raw in response.content:
                used = memory_in_use(raw)
                if used is not None:
                    await on_sample(used)


def memory_in_use(raw: bytes) -> int | None:
    """Memory in use from one stats sample, as ``docker stats`` counts it (without page cache)."""
    try:
        memory = json.loads(raw).get("memory_stats") or {}
    except (ValueError, AttributeError):
        return None
    usage = memory.get("usage")
    if not isinstance(usage, int):
        return None
    stats = memory.get("stats") or {}
    # cgroup v1 names it total_inactive_file, v2 inactive_file.
    cache = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    return usage - cache if isinstance(cache, int) and cache < usage else usage


def parse_event(raw: bytes) -> ContainerEvent | None:
    """One line of the engine's event stream; ``None`` for blank or foreign lines."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("Type") != "container":
        return None
    attributes = (data.get("Actor") or {}).get("Attributes") or {}
    code = attributes.get("exitCode")
    return ContainerEvent(
        action=str(data.get("Action") or data.get("status") or "").split(":")[0],
        container_id=str(data.get("id") or (data.get("Actor") or {}).get("ID") or ""),
        time_nano=int(data.get("timeNano") or 0),
        exit_code=int(code) if isinstance(code, str) and code.lstrip("-").isdigit() else None,
    )


class FrameDecoder:
    """Splits Docker's multiplexed log stream (8-byte header per frame) into payloads."""

    def __init__(self, *, raw: bool = False) -> None:
        self._raw = raw
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._raw:
            return [chunk]
        self._buffer += chunk
        payloads = []
        while len(self._buffer) >= 8:
            size = int.from_bytes(self._buffer[4:8], "big")
            if len(self._buffer) < 8 + size:
                break
            payloads.append(self._buffer[8 : 8 + size])
            self._buffer = self._buffer[8 + size :]
        return payloads


class LineSplitter:
    """Turns arbitrary byte chunks into complete, decoded lines."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[str]:
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        rest, self._partial = self._partial, b""
        return [rest.decode("utf-8", "replace")] if rest else []
