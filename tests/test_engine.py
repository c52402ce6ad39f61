"""The Docker seam: pure specs, stream decoding, and aiodocker quirks fixed at our seam."""

from __future__ import annotations

import errno
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey

from rolling_update import ContainerInfo, ContainerSpec, DockerEngine, EngineUnavailable
from rolling_update._config.settings import EngineConfig
from rolling_update._deploy.release import Release
from rolling_update._engine.docker import unreachable_why
from rolling_update._engine.model import ContainerEvent
from rolling_update._engine.parse import (
    FrameDecoder,
    LineSplitter,
    build_output,
    memory_in_use,
    parse_event,
)
from tests.engineproxy import EngineProxy
from tests.support import BASE_IMAGE, docker, free_port, require_engine


def test_spec_to_api_is_the_docker_create_body() -> None:
    """A spec maps to exactly the Docker create JSON: host network, restart policy, no limits."""
    spec = ContainerSpec(
        name="app",
        image="app:2",
        env={"PORT": "5221", "A": "b"},
        command=["x", "y"],
        labels={"k": "v"},
        stop_timeout=10,
    )
    assert spec.to_api() == {
        "Image": "app:2",
        "Env": ["PORT=5221", "A=b"],
        "Labels": {"k": "v"},
        "HostConfig": {
            "NetworkMode": "host",
            "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
        },
        "Cmd": ["x", "y"],
        "StopTimeout": 10,
    }


def test_spec_repr_hides_env_values() -> None:
    """Printing a spec (in a log or traceback) never shows env values."""
    assert "hunter2" not in repr(ContainerSpec(name="a", image="b", env={"PW": "hunter2"}))


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (OSError(errno.ENOENT, "No such file or directory"), "No such file or directory"),
        # asyncio's text names the address, which the line names already: the errno's.
        (
            OSError(errno.ECONNREFUSED, "Connect call failed ('10.0.0.2', 2376)"),
            "Connection refused",
        ),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "Name or service not known",
        ),
        # An SSH forward's own check: its text names the remote socket.
        (
            aiohttp.ClientOSError(errno.ECONNREFUSED, "/var/run/docker.sock on h2: refused"),
            "/var/run/docker.sock on h2: refused",
        ),
        (
            aiohttp.ClientConnectorError(
                ConnectionKey("h2", 2376, True, True, None, None, None),
                ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed"),
            ),
            "certificate verify failed: self-signed",
        ),
        (aiohttp.ServerDisconnectedError(), "Server disconnected"),
        (TimeoutError(), "TimeoutError"),
    ],
)
def test_an_unreachable_engine_is_told_by_its_cause(error: Exception, said: str) -> None:
    """Why a connection failed is the cause's own words (TLS, DNS, an SSH forward's check),
    the errno's where asyncio's text only repeats the address, and never an empty string."""
    assert said in unreachable_why(error)


def test_frames_and_lines_survive_arbitrary_chunking() -> None:
    """Multiplexed log frames split at any byte boundary decode to the same lines."""
    payload = b"".join(
        bytes([1, 0, 0, 0]) + len(p).to_bytes(4, "big") + p
        for p in [b"hello\nwor", b"ld\n", b"\xc3\xa9t\xc3\xa9\n", b"tail"]
    )
    for size in (1, 3, 7, len(payload)):
        frames, lines, out = FrameDecoder(), LineSplitter(), []
        for i in range(0, len(payload), size):
            for chunk in frames.feed(payload[i : i + size]):
                out += lines.feed(chunk)
        out += lines.flush()
        assert out == ["hello", "world", "été", "tail"]


def test_event_lines_parse_into_container_events() -> None:
    """An engine event line gives action, id, time and exit code; others are skipped."""
    raw = (
        b'{"Type":"container","Action":"die","id":"abc","timeNano":5,'
        b'"Actor":{"ID":"abc","Attributes":{"exitCode":"3"}}}'
    )
    assert parse_event(raw) == ContainerEvent("die", "abc", 5, 3)
    assert parse_event(b'{"Type":"network","Action":"connect"}') is None
    assert parse_event(b"garbage") is None


@pytest.fixture
async def engine() -> AsyncIterator[DockerEngine]:
    require_engine()
    async with DockerEngine() as engine:
        yield engine


@pytest.fixture
def chatty() -> Iterator[str]:
    """A running container that prints a line every 50 ms."""
    require_engine()
    name = f"rutest-chatty-{uuid.uuid4().hex[:8]}"
    docker(
        "run",
        "-d",
        "--name",
        name,
        BASE_IMAGE,
        "python3",
        "-uc",
        "import time\nwhile True:\n    print('tick', flush=True); time.sleep(0.05)",
    )
    yield name
    docker("rm", "-f", name, check=False)


@pytest.mark.docker
@pytest.mark.anyio
async def test_cancelled_log_follows_do_not_exhaust_the_connection_pool(
    engine: DockerEngine, chatty: str
) -> None:
    """Regression: 150 cancelled log follows (more than the pool's 100) leave the client usable."""
    # aiodocker 0.27 leaks a pooled connection per cancelled streaming call; our
    # seam releases each response, so the call after them still answers.
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)

    for _ in range(150):
        async with anyio.create_task_group() as tg:
            await tg.start(engine.follow_logs, chatty, on_line)
            tg.cancel_scope.cancel()
    with anyio.fail_after(10):
        info = await engine.inspect(chatty)
    assert info is not None and info.running
    assert "tick" in lines


@asynccontextmanager
async def exited(engine: DockerEngine) -> AsyncIterator[ContainerInfo]:
    """A container that ran ``true`` and exited (code 0), removed afterwards."""
    name = f"rutest-exited-{uuid.uuid4().hex[:8]}"
    container_id = await engine.create(
        ContainerSpec(name=name, image=BASE_IMAGE, command=["true"], restart="no")
    )
    try:
        await engine.start(container_id)
        await engine.wait(container_id)
        info = await engine.inspect(container_id)
        assert info is not None
        yield info
    finally:
        await engine.remove(container_id)


@pytest.mark.docker
@pytest.mark.anyio
async def test_events_before_the_subscription_are_replayed(engine: DockerEngine) -> None:
    """watch_events with since= sees a container's start and die even if both came first."""
    async with exited(engine) as info:
        container_id = info.id
        seen: list[ContainerEvent] = []

        with anyio.move_on_after(10) as scope:

            async def on_event(event: ContainerEvent) -> None:
                seen.append(event)
                if event.action == "die":
                    scope.cancel()

            await engine.watch_events(container_id, int((info.created - 1) * 1e9), on_event)
    assert [e.action for e in seen if e.action in ("start", "die")] == ["start", "die"]
    assert seen[-1].exit_code == 0


@pytest.mark.docker
@pytest.mark.anyio
async def test_missing_things_are_none_and_undo_is_idempotent(engine: DockerEngine) -> None:
    """Inspecting a missing container gives None; removing or stopping it again is no error."""
    missing = f"rutest-missing-{uuid.uuid4().hex[:8]}"
    assert await engine.inspect(missing) is None
    await engine.remove(missing)
    await engine.stop(missing, grace=1)
    assert await engine.image_exists(f"rutest-none-{time.time_ns()}:x") is False


def test_memory_in_use_leaves_out_page_cache() -> None:
    """Memory is counted as docker stats does: usage minus inactive file cache (v1 and v2 names)."""
    v1 = b'{"memory_stats": {"usage": 1000, "stats": {"total_inactive_file": 300}}}'
    v2 = b'{"memory_stats": {"usage": 1000, "stats": {"inactive_file": 100}}}'
    assert memory_in_use(v1) == 700
    assert memory_in_use(v2) == 900
    assert memory_in_use(b'{"memory_stats": {}}') is None
    assert memory_in_use(b"[]") is None


def test_build_lines_lose_the_classic_builders_colours() -> None:
    """A step's stderr, which the classic builder colours, reads as its plain text."""
    raw = b'{"stream": "\\u001b[91mhead: No space left on device\\n\\u001b[0m"}'
    assert build_output(raw, "x:1") == ["head: No space left on device"]


@pytest.mark.docker
@pytest.mark.anyio
async def test_a_build_cut_short_releases_its_connection(tmp_path: Path) -> None:
    """Regression: a build cancelled by its deadline frees its connection (pool of 1 proves it)."""
    require_engine()
    (tmp_path / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nRUN sleep 20\n")
    tag = f"rutest-slowbuild-{uuid.uuid4().hex[:8]}:1"
    async with DockerEngine(connections=1) as engine:
        with anyio.move_on_after(1.5) as scope:
            await engine.build_image(
                tmp_path, dockerfile="Dockerfile", tag=tag, args={}, on_line=lambda line: None
            )
        assert scope.cancelled_caught
        with anyio.fail_after(10):
            await engine.ping()
            assert await engine.image_exists(tag) is False


@pytest.mark.docker
@pytest.mark.anyio
async def test_every_call_to_a_hung_engine_ends_by_call_timeout(
    engine_proxy: EngineProxy, chatty: str
) -> None:
    """A read, a change and a stream's first answer each fail as EngineUnavailable by
    engine.call_timeout when the engine hangs, and leave no connection behind (pool of 1)."""
    limits = EngineConfig(call_timeout=0.5)
    async with DockerEngine(engine_proxy.url, connections=1, limits=limits) as engine:

        async def on_line(line: str) -> None:
            pass

        async def on_event(event: ContainerEvent) -> None:
            pass

        async def follow() -> None:
            await engine.follow_logs(chatty, on_line)

        async def watch() -> None:
            await engine.watch_events(chatty, time.time_ns(), on_event)

        async def rename() -> None:
            await engine.rename(chatty, chatty)

        async def inspect() -> None:
            await engine.inspect(chatty)

        engine_proxy.stall()
        for call in (inspect, rename, follow, watch):
            with anyio.fail_after(10), pytest.raises(EngineUnavailable, match="did not answer"):
                await call()
        engine_proxy.pass_()
        with anyio.fail_after(10):
            info = await engine.inspect(chatty)
        assert info is not None and info.running


@pytest.fixture
def stubborn() -> Iterator[str]:
    """A running container that ignores SIGTERM: stopping it takes its whole grace period."""
    require_engine()
    name = f"rutest-stubborn-{uuid.uuid4().hex[:8]}"
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(120)"
    docker("run", "-d", "--name", name, BASE_IMAGE, "python3", "-c", code)
    yield name
    docker("rm", "-f", name, check=False)


@pytest.mark.docker
@pytest.mark.anyio
async def test_a_shielded_engine_call_ends_at_the_callers_deadline(
    engine: DockerEngine, stubborn: str
) -> None:
    """Regression: a rollback bounded to 1 s ends then, though its stop has a 30 s grace."""
    with anyio.fail_after(10):
        with anyio.move_on_after(1, shield=True) as scope:
            await engine.stop(stubborn, grace=30)
        assert scope.cancelled_caught


@pytest.mark.docker
@pytest.mark.anyio
async def test_a_death_past_the_engines_event_replay_is_still_seen(
    engine: DockerEngine, tmp_path: Path
) -> None:
    """Regression: a die pushed out of the engine's replay by 300 events is seen from state."""
    import aiohttp

    from rolling_update import DeployContext, GreenFailed
    from rolling_update._config.settings import parse_config
    from rolling_update._watch.watch import watching

    async with exited(engine) as info:
        name = info.name
        for i in range(150):  # a volume create and destroy: two events each
            await engine.claim_marker(f"{name}-{i}", {})
            await engine.remove_marker(f"{name}-{i}")
        cfg = parse_config(
            {
                "service": {"name": name, "green_name": f"{name}-g", "port": 1, "green_port": 2},
                "image": {"name": "x:{version}", "version_file": "p.json"},
            },
            base_dir=tmp_path,
            environ={},
            source="t.toml",
        )
        async with aiohttp.ClientSession() as http:
            ctx = DeployContext(
                config=cfg,
                engine=engine,
                http=http,
                deploy_id="d",
                release=Release(version="1", image="x", env={}),
            )
            with anyio.fail_after(10), pytest.raises(GreenFailed, match="exited"):
                async with watching(
                    ctx,
                    container_id=info.id,
                    container_name=name,
                    since_nano=int((info.created - 1) * 1e9),
                    failure=GreenFailed,
                    doing="waiting",
                ):
                    await anyio.sleep_forever()


@pytest.mark.docker
@pytest.mark.anyio
async def test_the_engine_mark_goes_to_whoever_claimed_it_first(engine: DockerEngine) -> None:
    """Claiming a marked name returns the first claimer's labels; read and remove are idempotent."""
    name = f"rutest-mark-{uuid.uuid4().hex[:8]}"
    try:
        assert await engine.claim_marker(name, {"who": "first"}) == {"who": "first"}
        assert await engine.claim_marker(name, {"who": "second"}) == {"who": "first"}
        assert await engine.read_marker(name) == {"who": "first"}
    finally:
        await engine.remove_marker(name)
    assert await engine.read_marker(name) is None
    await engine.remove_marker(name)


class StandInEngine:
    """An HTTP server on a unix socket (or, given a ``port``, on 127.0.0.1's tcp port) that
    answers what an engine answers to a ping and an inspect; :meth:`stop` takes it away
    (socket gone, port refusing) and :meth:`start` brings it back."""

    def __init__(self, path: Path, port: int | None = None) -> None:
        self.path = path
        self.port = port
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}" if self.port else f"unix://{self.path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/version", self.version)
        app.router.add_get("/{api}/version", self.version)
        app.router.add_get("/{api}/containers/{id}/json", self.container)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site: web.BaseSite
        if self.port:
            site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        else:
            site = web.UnixSite(self.runner, str(self.path))
        await site.start()

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        self.path.unlink(missing_ok=True)

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": "1.41", "Version": "20.10.24"})

    async def container(self, request: web.Request) -> web.Response:
        return web.json_response({"message": "No such container"}, status=404)


@pytest.mark.parametrize("transport", ["unix", "tcp"])
@pytest.mark.anyio
async def test_calls_wait_out_an_engine_restart(tmp_path: Path, transport: str) -> None:
    """A call made while the engine restarts (its socket gone, its tcp port refusing) is
    answered once it is back; an address where no engine ever answered is refused at once."""
    port = free_port() if transport == "tcp" else None
    stand_in = StandInEngine(tmp_path / "docker.sock", port)
    await stand_in.start()
    async with DockerEngine(stand_in.url) as engine:
        await stand_in.stop()
        async with anyio.create_task_group() as tg:
            tg.start_soon(engine.inspect, "blue")

            async def back() -> None:
                await anyio.sleep(0.5)
                await stand_in.start()

            tg.start_soon(back)
            with anyio.fail_after(10):
                assert await engine.inspect("blue") is None
    await stand_in.stop()
    with anyio.fail_after(5), pytest.raises(EngineUnavailable):
        async with DockerEngine(stand_in.url):
            pass


@pytest.mark.anyio
async def test_calls_wait_while_the_transport_says_the_engine_refuses(tmp_path: Path) -> None:
    """A call whose transport's check says the engine's socket refuses (an SSH forward's
    remote socket, while the engine restarts) waits until it accepts again, then is answered;
    a check that fails otherwise (the SSH connection gone) fails the call at once."""
    stand_in = StandInEngine(tmp_path / "docker.sock")
    await stand_in.start()
    refusing: list[OSError] = []
    checks = 0

    async def reach() -> None:
        nonlocal checks
        checks += 1
        if refusing:
            raise refusing[0]

    try:
        async with DockerEngine(f"unix://{stand_in.path}", reach=reach) as engine:
            # The pooled connection closed (the server's end), so the call needs a new one.
            await stand_in.stop()
            await stand_in.start()
            refusing.append(ConnectionRefusedError(errno.ECONNREFUSED, "engine restarting"))
            counted = checks
            async with anyio.create_task_group() as tg:

                async def back() -> None:
                    await anyio.sleep(0.5)
                    refusing.clear()

                tg.start_soon(back)
                with anyio.fail_after(10):
                    assert await engine.inspect("blue") is None
            assert checks > counted
            await stand_in.stop()
            await stand_in.start()
            refusing.append(ConnectionAbortedError(errno.ECONNABORTED, "SSH connection closed"))
            with anyio.fail_after(5), pytest.raises(EngineUnavailable):
                await engine.inspect("blue")
    finally:
        await stand_in.stop()
