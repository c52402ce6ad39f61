"""The one class that talks to Docker: :class:`DockerEngine`, the :class:`Engine` on aiodocker.

It is the only place aiodocker and its errors are seen: every error is
translated once, here; every call is bounded by ``engine.call_timeout`` (a hung
engine's call fails as :class:`EngineUnavailable`), and every call that changes
engine state is also shielded. Streaming calls (log follow, events) each get a client of their own
that is closed when the stream ends: cancelling a streaming call in aiodocker
0.27 leaks its pooled connection, and enough leaks make every later call hang.
An engine that restarts (an upgrade, a crash) is waited for while it comes back,
on a unix socket, over tcp:// or at the end of an SSH forward (:class:`_WaitsForRestart`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import anyio
import anyio.lowlevel
import structlog
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.tracing import Trace
from anyio.abc import TaskStatus

from rolling_update._config.settings import EngineConfig
from rolling_update._engine.build_context import build_context_tar
from rolling_update._engine.model import (
    BuildOptions,
    ContainerEvent,
    ContainerInfo,
    ContainerSpec,
    ImageInfo,
    split_reference,
)
from rolling_update._engine.parse import (
    FrameDecoder,
    LineSplitter,
    build_output,
    container_info,
    memory_in_use,
    parse_event,
    progress_line,
)
from rolling_update._errors import BuildFailed, EngineError, EngineUnavailable

_CLOSE_LIMIT = 5.0


_CHUNK = 1 << 20


# An engine that answered once and whose socket is then missing or refuses is
# restarting (a service manager's restart, an upgrade): new connections are
# retried this long (measured here: 1-3 s, plus its containers' stop timeouts
# without live-restore). No request was sent, so a mutation is retried safely.
RESTART_LIMIT = 30.0


_RESTART_PAUSE = 0.1


# The socket missing or refusing; over tcp:// also a reset while the engine's listener
# comes up (a TLS handshake the engine drops as it shuts down).
_RESTARTING = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.ECONNRESET})


Reach = Callable[[], Awaitable[None]]
"""A transport's own check that the engine's socket accepts, made before each new
connection where connecting proves nothing: an SSH forward's local socket always
accepts, and the remote socket refusing shows only once a request is sent. It raises
:class:`OSError` (``ECONNREFUSED`` for the engine's socket refusing)."""


class _WaitsForRestart(aiohttp.BaseConnector):
    """A connector to the engine that waits while the engine restarts: its socket (local,
    or at the end of an SSH forward) or its tcp:// port refuses new connections.

    Only once the engine has answered: an address where no engine ever answered
    is refused at once (exit 2), not waited for. The caller's deadline still
    bounds each wait; :data:`RESTART_LIMIT` bounds an outage.
    """

    answered = False
    reach: Reach | None = None

    def _where(self) -> str:
        raise NotImplementedError

    async def _create_connection(
        self,
        req: ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> ResponseHandler:
        for attempt in range(math.ceil(RESTART_LIMIT / _RESTART_PAUSE) + 1):
            try:
                if self.reach is not None:
                    await self.reach()
                proto = await super()._create_connection(req, traces, timeout)
            except OSError as exc:
                # aiohttp's ClientConnectorError is an OSError that holds the socket's own.
                refused = exc.os_error if isinstance(exc, aiohttp.ClientConnectorError) else exc
                if not self.answered or refused.errno not in _RESTARTING:
                    raise
                if attempt * _RESTART_PAUSE >= RESTART_LIMIT:
                    raise
                if attempt == 0:
                    structlog.get_logger().warning(
                        "engine.restarting", socket=self._where(), why=str(refused),
                        limit=RESTART_LIMIT,
                    )  # fmt: skip
                await anyio.sleep(_RESTART_PAUSE)
                continue
            if not self.answered:
                self.answered = True
            elif attempt:
                structlog.get_logger().info("engine.back", socket=self._where())
            return proto
        raise AssertionError("unreachable: the last attempt raises")


class _RestartingUnix(_WaitsForRestart, aiohttp.UnixConnector):
    """The engine's unix socket (or an SSH forward of it), waited for while it restarts."""

    def _where(self) -> str:
        return self.path


class _RestartingTcp(_WaitsForRestart, aiohttp.TCPConnector):
    """The engine's tcp:// port, waited for while it restarts."""

    def __init__(self, address: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.address = address

    def _where(self) -> str:
        return self.address


# What a request in flight meets when the engine goes away under it (a restart): the
# answer cut mid-body, or the connection closed before it.
_CUT = (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)


# A wait cut this many times running is not an engine restarting once.
_REWAITS = 3


def _cut_short() -> contextlib.suppress:
    """A follow (logs, events) that the engine going away cuts mid-stream ends, as it
    ends when the container exits: its caller watches the container's state besides."""
    return contextlib.suppress(*_CUT)


def _was_cut(exc: BaseException) -> bool:
    """Whether ``exc`` (translated, or aiodocker's own wrapping) comes from a cut request."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, _CUT):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def unreachable_why(exc: Exception) -> str:
    """Why a connection to the engine failed, in the words that say it best: a TLS or DNS
    failure's own, an SSH forward's check's (its text names the remote socket), else the
    system's for the errno (asyncio's own text is "Connect call failed (address)")."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        # Its text repeats the address ("Cannot connect to unix socket …"): the cause.
        exc = exc.os_error
    if isinstance(exc, ssl.SSLError):
        return str(exc)
    if isinstance(exc, OSError):
        if exc.strerror and not exc.strerror.startswith("Connect call failed"):
            return exc.strerror
        if exc.errno is not None and exc.errno > 0:
            return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


class DockerEngine:
    """:class:`Engine` on a real Docker engine, through aiodocker.

    Use as an async context manager; every aiodocker/aiohttp error is
    translated here into :class:`EngineError` or :class:`EngineUnavailable`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        connections: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
        limits: EngineConfig | None = None,
        reach: Reach | None = None,
        address: str | None = None,
    ) -> None:
        """``reach``: the transport's check that the engine's socket accepts (an SSH
        forward's, see :data:`Reach`), made before each new connection; ``address``: the
        engine as the operator named it, where ``url`` is not that (an SSH forward's socket)."""
        # An engine that leaves a call unanswered this long is not coming back in time.
        # Kept short: an interrupted deploy waits for the call in flight before its
        # rollback, and the two together must fit a service manager's stop timeout (README).
        self._limit = (limits or EngineConfig()).call_timeout
        # ``connections`` caps the client's pool (aiodocker's default is 100):
        # a leak shows at once with 1, which is how the tests prove there is none.
        # aiodocker keeps a tcp:// address as it is when it is given a TLS context,
        # and aiohttp speaks neither tcp:// nor TLS to an http:// URL.
        # Where the engine was looked for, as the operator set it (else DOCKER_HOST or a
        # docker context, found on entry): what an unreachable engine's line names.
        self._named = address or url
        if url is not None and url.startswith("tcp://"):
            url = ("https://" if ssl_context is not None else "http://") + url[len("tcp://") :]
        self._url = url
        self._connections = connections
        self._ssl = ssl_context
        self._reach = reach
        self._client: aiodocker.Docker | None = None
        self._connector: aiohttp.BaseConnector | None = None
        self._address = ""

    async def __aenter__(self) -> DockerEngine:
        self._client = await self._new_client()
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
                if self._connector is not None:
                    # Ours, not aiodocker's: it leaves a connector it was given open.
                    await self._connector.close()
            self._client = None

    async def _new_client(self) -> aiodocker.Docker:
        try:
            client = aiodocker.Docker(url=self._url, ssl_context=self._ssl)
            found = client.connector
            # The address aiodocker found (the url, a docker context, DOCKER_HOST or the
            # default), through our connector instead of its own.
            connector: _WaitsForRestart
            limit = self._connections or 100
            # aiodocker's docker_host is its rewrite (unix://localhost, https://…).
            self._address = (
                self._named
                or os.environ.get("DOCKER_HOST")
                or (f"unix://{found.path}" if isinstance(found, aiohttp.UnixConnector) else "")
                or client.docker_host
            )
            if isinstance(found, aiohttp.UnixConnector):
                connector = _RestartingUnix(found.path, limit=limit)
                # As aiodocker sets it when it makes the unix connector itself.
                host = "http://localhost"
            elif isinstance(found, aiohttp.TCPConnector):
                host = client.docker_host
                # The TLS context aiodocker settled on (ours, a docker context's, or
                # DOCKER_TLS_VERIFY's). aiohttp has no public way to read it back; the
                # DOCKER_TLS_VERIFY case in tests/test_hosts_e2e.py fails if it moves.
                connector = _RestartingTcp(host, ssl=found._ssl, limit=limit)
            else:
                await client.close()
                raise ValueError(f"{client.docker_host}: use unix:// or tcp://")
            await client.close()
            connector.reach = self._reach
            self._connector = connector
            client = aiodocker.Docker(url=host, connector=connector)
            client.docker_host = host
            return client
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
                # aiodocker's "Cannot connect to Docker Engine via <its own URL> [why]"
                # names http://localhost for any unix socket, raised while handling why.
                cause = exc.__context__
                why = unreachable_why(cause) if isinstance(cause, Exception) else exc.message
                raise EngineUnavailable(self._unreachable(str(why))) from exc
            raise EngineError(operation, target, exc.status, str(exc.message).strip()) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise EngineUnavailable(self._unreachable(unreachable_why(exc))) from exc

    def _unreachable(self, why: str) -> str:
        return f"Docker engine unreachable at {self._address}: {why}"

    def _unanswered(self, call: str, limit: float) -> EngineUnavailable:
        return EngineUnavailable(
            f"the Docker engine did not answer {call} within {limit:g}s (engine.call_timeout)"
        )

    @asynccontextmanager
    async def _bounded(self, operation: str, target: str) -> AsyncIterator[None]:
        """A call that reads (or changes nothing we must know the outcome of): translated,
        and failed as :class:`EngineUnavailable` when the engine leaves it unanswered."""
        with anyio.move_on_after(self._limit) as scope:
            async with self._translate(operation, target):
                yield
        if scope.cancelled_caught:
            raise self._unanswered(f"docker {operation} {target}", self._limit)

    @asynccontextmanager
    async def _mutation(
        self, operation: str, target: str, *, extra: float = 0.0
    ) -> AsyncIterator[None]:
        """A call that changes the engine's state: shielded, bounded, translated.

        Cancelling it mid-flight would leave the engine acting on a request we
        no longer know the outcome of (a container created after our undo
        looked for it). Shielded, the caller always learns what happened, and
        an interrupt is delivered at its next checkpoint. The shield never
        outlasts the caller's own deadline, though: a rollback bounded by
        ``rollback.step_timeout`` must end by then, whatever the engine does.
        ``extra`` is time the call needs on top of ``engine.call_timeout`` (a stop's grace).
        """
        limit = self._limit + extra
        outer = anyio.current_effective_deadline()
        if outer == -math.inf:
            # Already cancelled before the request went out: nothing is in flight.
            await anyio.lowlevel.checkpoint()
        deadline = min(anyio.current_time() + limit, outer)
        with anyio.CancelScope(deadline=deadline, shield=True) as scope:
            async with self._translate(operation, target):
                yield
        if scope.cancelled_caught:
            if deadline >= outer:
                # The caller's deadline, not ours: let its own scope report it.
                await anyio.lowlevel.checkpoint()
            raise self._unanswered(f"docker {operation} {target}", limit)

    async def ping(self) -> None:
        async with self._bounded("version", "engine"):
            await self.client.version()

    async def image_exists(self, ref: str) -> bool:
        return await self.image_id(ref) is not None

    async def image_id(self, ref: str) -> str | None:
        try:
            async with self._bounded("image inspect", ref):
                data = await self.client.images.inspect(ref)
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise
        return str(data.get("Id", ""))

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
        tar = await anyio.to_thread.run_sync(build_context_tar, context, dockerfile)
        params = {
            "t": tag,
            "dockerfile": dockerfile,
            "buildargs": json.dumps(dict(args)),
            "labels": json.dumps(dict(options.labels)),
            "rm": "1",
            "forcerm": "1",
        }
        if options.target:
            params["target"] = options.target
        if options.pull:
            params["pull"] = "1"
        if options.no_cache:
            params["nocache"] = "1"
        try:
            async with (
                self._translate("build", tag),
                # Our own stream, not aiodocker's images.build: a build cut short
                # by its deadline must release its connection (see _stream).
                self._stream(
                    "build",
                    params,
                    method="POST",
                    data=tar,
                    headers={"Content-Type": "application/x-tar"},
                ) as response,
            ):
                async for raw in response.content:
                    for line in build_output(raw, tag):
                        on_line(line)
        except EngineError as exc:
            raise BuildFailed(f"build of {tag} failed: {exc.detail}") from exc
        finally:
            tar.close()

    async def export_image(self, ref: str) -> AsyncGenerator[bytes, None]:
        """The image as a tar stream (``docker save``), in chunks as the engine sends them."""
        async with (
            self._translate("image save", ref),
            self._stream(f"images/{ref}/get", {}, assembled=True) as response,
        ):
            async for chunk in response.content.iter_chunked(_CHUNK):
                yield chunk

    async def load_image(self, chunks: AsyncIterator[bytes]) -> None:
        """Load a ``docker save`` tar stream (``docker load``) as it arrives."""
        async with (
            self._translate("image load", "stream"),
            self._stream(
                "images/load",
                {"quiet": "1"},
                method="POST",
                data=chunks,
                headers={"Content-Type": "application/x-tar"},
            ) as response,
        ):
            answer = await response.text()
        for line in answer.splitlines():
            try:
                error = json.loads(line).get("error")
            except (ValueError, AttributeError):
                continue
            if error:
                raise EngineError("image load", "stream", 500, str(error))

    async def push_image(
        self, ref: str, *, auth: str, on_status: Callable[[str], None] | None = None
    ) -> None:
        """``docker push``: ``auth`` is the X-Registry-Auth header (see ``_registry``)."""
        name, tag = split_reference(ref)
        await self._registry("push", ref, f"images/{name}/push", {"tag": tag}, auth, on_status)

    async def pull_image(
        self, ref: str, *, auth: str, on_status: Callable[[str], None] | None = None
    ) -> None:
        """``docker pull`` of exactly ``ref``."""
        name, tag = split_reference(ref)
        params = {"fromImage": name, "tag": tag}
        await self._registry("pull", ref, "images/create", params, auth, on_status)

    async def _registry(
        self,
        operation: str,
        ref: str,
        path: str,
        params: Mapping[str, str],
        auth: str,
        on_status: Callable[[str], None] | None,
    ) -> None:
        """A push or pull: its progress stream read to the end, its in-stream error raised."""
        headers = {"X-Registry-Auth": auth}
        async with (
            self._translate(operation, ref),
            self._stream(path, params, method="POST", headers=headers) as response,
        ):
            async for raw in response.content:
                progress_line(raw, operation, ref, on_status)

    async def run_once(self, spec: ContainerSpec, *, limit: float | None = None) -> tuple[int, str]:
        """Run a short-lived container to its end: exit code and output; removed after."""
        container_id = await self.create(spec)
        try:
            await self.start(container_id)
            with anyio.fail_after(self._limit if limit is None else limit):
                code = await self.wait(container_id)
            async with (
                self._bounded("logs", spec.name),
                self._stream(
                    f"containers/{container_id}/logs", {"stdout": "1", "stderr": "1"}
                ) as response,
            ):
                raw = await response.read()
        finally:
            with anyio.CancelScope(shield=True):
                await self.remove(container_id)
        text = b"".join(FrameDecoder().feed(raw)).decode(errors="replace")
        return code, text

    async def tag_image(self, source: str, target: str) -> None:
        """Point the reference ``target`` (repo:tag) at the image ``source`` names."""
        repo, tag = split_reference(target)
        async with self._bounded("image tag", target):
            await self.client.images.tag(source, repo, tag=tag)

    async def remove_image(self, ref: str) -> None:
        try:
            async with self._bounded("image rm", ref):
                await self.client.images.delete(ref)
        except EngineError as exc:
            if exc.status != 404:
                raise

    async def list_images(
        self, labels: Mapping[str, str], *, reference: str | None = None
    ) -> list[ImageInfo]:
        """Images carrying every label given (and matching ``reference``), newest first."""
        wanted: dict[str, list[str]] = {"label": [f"{k}={v}" for k, v in labels.items()]}
        if reference:
            wanted["reference"] = [reference]
        filters = json.dumps(wanted)
        async with self._bounded("images", "list"):
            found = await self._call("GET", "images/json", params={"filters": filters})
        images = [
            ImageInfo(id=str(i["Id"]), tags=list(i.get("RepoTags") or []), created=i["Created"])
            for i in found
        ]
        return sorted(images, key=lambda i: i.created, reverse=True)

    async def claim_marker(self, name: str, labels: Mapping[str, str]) -> dict[str, str]:
        """Create the volume ``name`` with ``labels``; return the labels it really has.

        Creating a volume that exists returns the existing one, untouched: the
        engine serialises the two, so whoever's labels come back holds the mark.
        """
        async with self._mutation("volume create", name):
            data = await self._call(
                "POST", "volumes/create", body={"Name": name, "Labels": dict(labels)}
            )
        return dict(data.get("Labels") or {})

    async def read_marker(self, name: str) -> dict[str, str] | None:
        try:
            async with self._bounded("volume inspect", name):
                data = await self._call("GET", f"volumes/{name}")
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(data.get("Labels") or {})

    async def remove_marker(self, name: str) -> None:
        try:
            async with self._mutation("volume rm", name):
                await self._call("DELETE", f"volumes/{name}")
        except EngineError as exc:
            if exc.status != 404:
                raise

    async def _call(
        self, method: str, path: str, *, body: Any = None, params: Mapping[str, str] | None = None
    ) -> Any:
        """One plain API call (aiodocker's volume API is untyped); JSON answer or ``{}``."""
        async with self._stream(path, params or {}, method=method, json_body=body) as response:
            text = await response.text()
        return json.loads(text) if text.strip() else {}

    async def inspect(self, name_or_id: str) -> ContainerInfo | None:
        raw = await self.inspect_raw(name_or_id)
        return None if raw is None else container_info(raw)

    async def inspect_raw(self, name_or_id: str) -> dict[str, Any] | None:
        """The engine's whole inspect answer for a container, or ``None``."""
        try:
            async with self._bounded("inspect", name_or_id):
                container = await self.client.containers.get(name_or_id)
        except EngineError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(container._container)

    async def image_config(self, ref: str) -> dict[str, Any]:
        """An image's ``Config`` (its ENV, CMD, labels...); empty when the image is gone."""
        try:
            async with self._bounded("image inspect", ref):
                data = await self.client.images.inspect(ref)
        except EngineError as exc:
            if exc.status == 404:
                return {}
            raise
        return dict(data.get("Config") or {})

    async def list_ids(self, labels: Mapping[str, str]) -> list[str]:
        """Ids of all containers (running or not) carrying every label given."""
        filters = {"label": [f"{k}={v}" for k, v in labels.items()]}
        async with self._bounded("ps", "containers"):
            found = await self.client.containers.list(all=True, filters=json.dumps(filters))
        return [str(c.id) for c in found]

    async def create(self, spec: ContainerSpec) -> str:
        # create + start, never containers.run(): run() pulls on a missing image.
        async with self._mutation("create", spec.name):
            container = await self.client.containers.create(spec.to_api(), name=spec.name)
            for network, aliases in spec.networks.items():
                if network != spec.network:
                    await self._call(
                        "POST",
                        f"networks/{network}/connect",
                        body={"Container": container.id, "EndpointConfig": {"Aliases": aliases}},
                    )
        return str(container.id)

    async def start(self, container_id: str) -> None:
        async with self._mutation("start", container_id[:12]):
            await self.client.containers.container(container_id).start()

    async def stop(self, container_id: str, *, grace: int) -> None:
        try:
            async with self._mutation("stop", container_id[:12], extra=grace):
                await self.client.containers.container(container_id).stop(t=int(grace))
        except EngineError as exc:
            if exc.status not in (304, 404):
                raise

    async def kill(self, container_id: str, signal: str) -> None:
        """Send ``signal`` (a name: SIGUSR2) to the container's main process; the container
        is not stopped unless the signal makes it exit."""
        async with self._mutation("kill", f"{container_id[:12]} {signal}"):
            await self.client.containers.container(container_id).kill(signal=signal)

    async def remove(self, container_id: str) -> None:
        try:
            async with self._mutation("rm", container_id[:12]):
                # v: anonymous volumes go with the container, as with `docker rm -v`;
                # otherwise every deploy leaves one behind per container.
                await self.client.containers.container(container_id).delete(force=True, v=True)
        except EngineError as exc:
            if exc.status != 404:
                raise

    async def rename(self, container_id: str, name: str) -> None:
        async with self._mutation("rename", f"{container_id[:12]} to {name}"):
            await self.client.containers.container(container_id).rename(name)

    async def wait(self, container_id: str) -> int:
        """The container's exit code, once it has exited.

        A wait that the engine's restart cuts is made again once the engine answers
        (the connector waits for it, on a unix socket, over tcp:// or ssh://): the
        container ran on through the restart (live-restore) and is waited for still, or
        the engine stopped it, and the new wait says with which code. The caller's
        deadline bounds it all.
        """
        for attempt in range(_REWAITS + 1):
            try:
                async with self._translate("wait", container_id[:12]):
                    result = await self.client.containers.container(container_id).wait()
            except EngineUnavailable as exc:
                if attempt == _REWAITS or not _was_cut(exc):
                    raise
                structlog.get_logger().warning(
                    "engine.wait_cut", container=container_id[:12], why=str(exc)
                )
                continue
            return int(result.get("StatusCode", -1))
        raise AssertionError("unreachable: the last attempt returns or raises")

    @asynccontextmanager
    async def _stream(
        self,
        path: str,
        params: Mapping[str, str],
        *,
        method: str = "GET",
        data: Any = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        assembled: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A streaming request whose response is released however the caller leaves.

        aiodocker's own streaming calls never release their response when
        cancelled, so each cancelled follow leaks a pooled connection until
        every later call hangs. ``async with`` on aiohttp's response does not.
        Its first answer is bounded by ``engine.call_timeout``, except after an
        upload (a build context, an image): the engine answers once it has it all,
        and the caller's deadline (``build.timeout``...) bounds that; likewise with
        ``assembled`` (an image export, which answers once its layers are gathered).
        """
        client = self.client
        url = f"{client.docker_host}/{client.api_version}/{path}"
        request = client.session.request(
            method,
            url,
            params=params,
            data=data,
            json=json_body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        )
        async with AsyncExitStack() as stack:
            limit = self._limit if data is None and not assembled else math.inf
            with anyio.move_on_after(limit) as scope:
                response = await stack.enter_async_context(request)
            if scope.cancelled_caught:
                raise self._unanswered(f"{method} /{path}", limit)
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
        async with self._bounded("logs", container_id[:12]):
            info = await self.client.containers.get(container_id)
        async with self._translate("logs", container_id[:12]):
            tty = bool(info._container.get("Config", {}).get("Tty"))
            params = {"stdout": "1", "stderr": "1", "follow": "1", "tail": "all" if replay else "0"}
            async with self._stream(f"containers/{container_id}/logs", params) as response:
                task_status.started()
                lines = LineSplitter()
                frames = FrameDecoder(raw=tty)
                with _cut_short():
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
            with _cut_short():
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
