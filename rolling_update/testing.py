"""Test helpers for plans and custom steps, shipped the way httpx ships MockTransport.

:class:`FakeEngine` implements the whole :class:`rolling_update.Engine` protocol in
memory: names, labels, running state, images (exported and loaded, pushed to and
pulled from a registry that is a dict), one-off runs, and the 404/409 answers a real
engine gives. It is a fake at our own seam, for fast tests of step logic, recovery
and whole rollouts; the real behaviour is proven on a real engine by the end-to-end
tests.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from rolling_update._engine.model import (
    BuildOptions,
    ContainerEvent,
    ContainerInfo,
    ContainerSpec,
    ImageInfo,
)
from rolling_update._errors import EngineError

__all__ = ["FakeContainer", "FakeEngine"]


def _image_id(ref: str) -> str:
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


@dataclass
class FakeContainer:
    id: str
    spec: ContainerSpec
    name: str
    running: bool = False
    exit_code: int = 0
    created: float = field(default_factory=time.time)
    logs: list[str] = field(default_factory=list)
    memory: int = 10 * 2**20
    restart_count: int = 0
    health: str | None = None
    oom_killed: bool = False
    restarting: bool = False
    """Between its restart policy's attempts: running as the engine says, without a network
    sandbox (renaming it fails, as Docker's does), until stopped."""
    tcp: str = ""
    """Its network namespace's TCP tables (``/proc/net/tcp`` format), as a helper container
    joining it prints them: the connections it holds (none by default)."""

    def info(self) -> ContainerInfo:
        return ContainerInfo(
            id=self.id,
            name=self.name,
            image=self.spec.image,
            running=self.running,
            status="restarting" if self.restarting else "running" if self.running else "exited",
            restart=self.spec.restart,
            labels=dict(self.spec.labels),
            restart_count=self.restart_count,
            exit_code=self.exit_code,
            created=self.created,
            image_id=_image_id(self.spec.image),
            health=self.health,
            oom_killed=self.oom_killed,
        )


class FakeEngine:
    """An in-memory container engine; ``calls`` records every change, in order.

    ``registry`` is where ``push_image`` puts an image and ``pull_image`` finds it
    (reference → the image): give two engines the same dict to share a registry.
    """

    def __init__(
        self, images: set[str] | None = None, *, registry: dict[str, str] | None = None
    ) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.images: set[str] = set(images or ())
        self.aliases: dict[str, str] = {}
        """A tag made by ``tag_image`` (or loaded, or pulled): the reference it points at."""
        self.registry: dict[str, str] = registry if registry is not None else {}
        self.runs: list[ContainerSpec] = []
        """Every one-off container run (``run_once``), in order: its command is in ``command``."""
        self.run_answer: Callable[[ContainerSpec], tuple[int, str]] = lambda spec: (0, "")
        """What a one-off run ends with: its exit code and output."""
        self.markers: dict[str, dict[str, str]] = {}
        self.calls: list[str] = []
        self.event_stream_ends = False
        """When true, every event stream ends at once, as on a daemon restart."""
        self.events: list[ContainerEvent] = []
        """Engine events each watch of their container is sent first (``die``, ``oom``...)."""
        self.failing: dict[str, Exception] = {}
        """Operation name (``start``, ``create``...) → the error that call raises."""

    def _check(self, operation: str) -> None:
        error = self.failing.get(operation)
        if error is not None:
            raise error

    def add(self, spec: ContainerSpec, *, running: bool = True) -> FakeContainer:
        """Put a container in place, as if someone else had made it earlier."""
        self.images.add(spec.image)
        container = FakeContainer(
            id=uuid.uuid4().hex * 2, spec=spec, name=spec.name, running=running
        )
        self.containers[container.id] = container
        return container

    def _find(self, name_or_id: str) -> FakeContainer | None:
        for c in self.containers.values():
            if name_or_id in (c.id, c.name) or (
                len(name_or_id) >= 12 and c.id.startswith(name_or_id)
            ):
                return c
        return None

    def _get(self, operation: str, name_or_id: str) -> FakeContainer:
        found = self._find(name_or_id)
        if found is None:
            raise EngineError(operation, name_or_id[:12], 404, "No such container")
        return found

    def names(self) -> list[str]:
        return sorted(c.name for c in self.containers.values())

    async def ping(self) -> None:
        pass

    async def image_exists(self, ref: str) -> bool:
        return ref in self.images

    async def list_images(
        self, labels: Mapping[str, str], *, reference: str | None = None
    ) -> list[ImageInfo]:
        return [
            ImageInfo(id=_image_id(ref), tags=[ref], created=0)
            for ref in sorted(self.images)
            if reference is None or ref.rpartition(":")[0] == reference
        ]

    async def image_id(self, ref: str) -> str | None:
        return _image_id(self.aliases.get(ref, ref)) if ref in self.images else None

    async def build_image(
        self,
        context: Path,
        *,
        dockerfile: str,
        tag: str,
        args: Mapping[str, str],
        on_line: Callable[[str], None],
        options: BuildOptions = BuildOptions(),
    ) -> None:
        self.calls.append(f"build {tag}")
        self.images.add(tag)
        on_line(f"Successfully tagged {tag}")

    async def remove_image(self, ref: str) -> None:
        self.images.discard(ref)
        self.aliases.pop(ref, None)

    def _source(self, operation: str, ref: str) -> str:
        """The reference ``ref`` points at (itself, unless a tag), or a 404."""
        if ref not in self.images:
            raise EngineError(operation, ref, 404, f"No such image: {ref}")
        return self.aliases.get(ref, ref)

    def _arrived(self, ref: str, source: str) -> None:
        """``ref`` is here now, the same image (id) as ``source`` wherever it came from."""
        self.images.add(ref)
        if source == ref:
            self.aliases.pop(ref, None)
        else:
            self.aliases[ref] = source

    async def export_image(self, ref: str) -> AsyncGenerator[bytes, None]:
        """The image as bytes (JSON, not a tar), in two chunks: ``load_image`` reads them."""
        self._check("export_image")
        payload = json.dumps({"ref": ref, "source": self._source("image save", ref)}).encode()
        self.calls.append(f"export {ref}")
        half = len(payload) // 2
        yield payload[:half]
        yield payload[half:]

    async def load_image(self, chunks: AsyncIterator[bytes]) -> None:
        self._check("load_image")
        data = b"".join([chunk async for chunk in chunks])
        try:
            image = json.loads(data)
            ref, source = str(image["ref"]), str(image["source"])
        except (ValueError, KeyError, TypeError):
            raise EngineError("image load", "stream", 500, "not an exported image") from None
        self.calls.append(f"load {ref}")
        self._arrived(ref, source)

    async def push_image(
        self, ref: str, *, auth: str, on_status: Callable[[str], None] | None = None
    ) -> None:
        self._check("push_image")
        self.registry[ref] = self._source("push", ref)
        self.calls.append(f"push {ref}")
        if on_status is not None:
            on_status(f"{ref}: Pushed")

    async def pull_image(
        self, ref: str, *, auth: str, on_status: Callable[[str], None] | None = None
    ) -> None:
        self._check("pull_image")
        if ref not in self.registry:
            raise EngineError("pull", ref, 404, f"manifest for {ref} not found")
        self.calls.append(f"pull {ref}")
        self._arrived(ref, self.registry[ref])
        if on_status is not None:
            on_status(f"Status: Downloaded newer image for {ref}")

    async def run_once(self, spec: ContainerSpec, *, limit: float = 15.0) -> tuple[int, str]:
        """Records ``spec`` in ``runs`` and answers ``run_answer(spec)``; no container stays.
        A run in a container's network namespace (``container:<id>``, the count of its
        connections) prints that container's ``tcp``, and cannot start if it does not run."""
        self._check("run_once")
        if spec.image not in self.images:
            raise EngineError("create", spec.name, 404, f"No such image: {spec.image}")
        self.calls.append(f"run {spec.image}")
        self.runs.append(spec)
        joined = spec.network.removeprefix("container:")
        if joined != spec.network:
            target = self._get("start", joined)
            if not target.running:
                raise EngineError(
                    "start", spec.name, 409, "cannot join network of a non running container"
                )
            return 0, target.tcp
        return self.run_answer(spec)

    async def tag_image(self, source: str, target: str) -> None:
        self.calls.append(f"tag {target}")
        by_id = {_image_id(self.aliases.get(ref, ref)): ref for ref in self.images}
        source = by_id.get(source, source)
        self.images.add(target)
        self.aliases[target] = self.aliases.get(source, source)

    async def claim_marker(self, name: str, labels: Mapping[str, str]) -> dict[str, str]:
        self._check("claim_marker")
        return dict(self.markers.setdefault(name, dict(labels)))

    async def read_marker(self, name: str) -> dict[str, str] | None:
        found = self.markers.get(name)
        return None if found is None else dict(found)

    async def remove_marker(self, name: str) -> None:
        self.markers.pop(name, None)

    async def inspect(self, name_or_id: str) -> ContainerInfo | None:
        found = self._find(name_or_id)
        return None if found is None else found.info()

    async def inspect_raw(self, name_or_id: str) -> dict[str, Any] | None:
        found = self._find(name_or_id)
        if found is None:
            return None
        body = found.spec.to_api()
        return {
            "Id": found.id,
            "Name": "/" + found.name,
            "Image": _image_id(found.spec.image),
            "Config": {k: v for k, v in body.items() if k != "HostConfig"},
            "HostConfig": body["HostConfig"],
            "State": {"Running": found.running},
        }

    async def image_config(self, ref: str) -> dict[str, Any]:
        return {}

    async def list_ids(self, labels: Mapping[str, str]) -> list[str]:
        return [
            c.id
            for c in self.containers.values()
            if all(c.spec.labels.get(k) == v for k, v in labels.items())
        ]

    async def create(self, spec: ContainerSpec) -> str:
        self._check("create")
        if self._find(spec.name) is not None:
            raise EngineError("create", spec.name, 409, f"name {spec.name} is already in use")
        if spec.image not in self.images:
            raise EngineError("create", spec.name, 404, f"No such image: {spec.image}")
        self.calls.append(f"create {spec.name}")
        return self.add(spec, running=False).id

    async def start(self, container_id: str) -> None:
        self._check("start")
        container = self._get("start", container_id)
        self.calls.append(f"start {container.name}")
        container.running = True

    async def stop(self, container_id: str, *, grace: int) -> None:
        container = self._find(container_id)
        if container is not None and container.running:
            self.calls.append(f"stop {container.name}")
            container.running = container.restarting = False

    async def kill(self, container_id: str, signal: str) -> None:
        self._check("kill")
        container = self._get("kill", container_id)
        if not container.running:
            raise EngineError("kill", container_id[:12], 409, f"{container.name} is not running")
        self.calls.append(f"kill {container.name} {signal}")

    async def remove(self, container_id: str) -> None:
        container = self._find(container_id)
        if container is not None:
            self.calls.append(f"rm {container.name}")
            del self.containers[container.id]

    async def rename(self, container_id: str, name: str) -> None:
        container = self._get("rename", container_id)
        if container.restarting:
            raise EngineError("rename", container_id[:12], 404, "sandbox 1f2e not found")
        if self._find(name) not in (None, container):
            raise EngineError("rename", name, 409, f"name {name} is already in use")
        self.calls.append(f"rename {container.name} {name}")
        container.name = name

    async def wait(self, container_id: str) -> int:
        container = self._get("wait", container_id)
        container.running = False
        return container.exit_code

    async def follow_logs(
        self,
        container_id: str,
        on_line: Callable[[str], Awaitable[None]],
        *,
        replay: bool = True,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        container = self._get("logs", container_id)
        task_status.started()
        for line in container.logs if replay else []:
            await on_line(line)

    async def watch_events(
        self,
        container_id: str,
        since_nano: int,
        on_event: Callable[[ContainerEvent], Awaitable[None]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        for event in self.events:
            if event.container_id == container_id and event.time_nano >= since_nano:
                await on_event(event)
        if not self.event_stream_ends:
            await anyio.sleep_forever()

    async def watch_memory(
        self,
        container_id: str,
        on_sample: Callable[[int], Awaitable[None]],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        container = self._get("stats", container_id)
        task_status.started()
        await on_sample(container.memory)
        await anyio.sleep_forever()
