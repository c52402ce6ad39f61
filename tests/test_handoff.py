"""The kernel handoff itself, on loopback: nftables moves new connections, not old ones.

IPv4 and IPv6 alike: a connection open when the redirect goes in stays on production, one
opened while it is in place stays on green when it goes (the tool's conntrack table); and
the entry of a connection a stopped listener reset, forgotten, sends no new connection to
that closed port."""

from __future__ import annotations

import select
import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from rolling_update._errors import EngineError, EngineUnavailable, HandoffError, HelperNotRun
from rolling_update._handoff.helper import Helper
from rolling_update._handoff.nft import (
    TRACK_TABLE,
    EngineFirewall,
    LocalFirewall,
    RedirectRule,
    _nft,
    _tracking,
    marked_socket,
    redirect,
    remove,
    table_name,
    target,
)
from rolling_update._handoff.port import PortHandoff
from rolling_update.testing import FakeEngine
from tests.support import free_port

pytestmark = pytest.mark.anyio


async def serving(name: str, host: str = "127.0.0.1") -> tuple[web.AppRunner, int]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=name)

    app = web.Application()
    app.router.add_get("/", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, host, port).start()
    return runner, port


@pytest.fixture(params=["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
async def ports(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, int, int]]:
    """A "production" and a "green" server on loopback (IPv4 or IPv6)."""
    host: str = request.param
    prod, prod_port = await serving("production", host)
    green, green_port = await serving("green", host)
    yield host, prod_port, green_port
    await prod.cleanup()
    await green.cleanup()


async def who(session: aiohttp.ClientSession, host: str, port: int) -> str:
    netloc = f"[{host}]" if ":" in host else host
    async with session.get(f"http://{netloc}:{port}/") as response:
        return await response.text()


async def test_new_connections_move_marked_and_established_ones_stay(
    ports: tuple[str, int, int],
) -> None:
    """Redirected: new connections reach green, marked ones production, open ones stay put."""
    host, prod, green = ports
    table = table_name(f"rutest-{uuid.uuid4().hex[:8]}")
    fresh = aiohttp.TCPConnector(force_close=True)
    kept = aiohttp.TCPConnector(limit=1)
    marked = aiohttp.TCPConnector(force_close=True, socket_factory=marked_socket)
    async with (
        aiohttp.ClientSession(connector=fresh) as plain,
        aiohttp.ClientSession(connector=kept) as keepalive,
        aiohttp.ClientSession(connector=marked) as tool,
    ):
        assert await who(keepalive, host, prod) == "production"  # opened before the redirect
        try:
            await redirect(table, prod, green)
            assert await target(table) == RedirectRule(green)
            assert await who(plain, host, prod) == "green"
            assert await who(tool, host, prod) == "production"
            assert await who(keepalive, host, prod) == "production"
        finally:
            await remove(table)
        assert await target(table) is None
        assert await who(plain, host, prod) == "production"


async def test_a_connection_redirected_to_green_stays_on_green_when_the_redirect_goes(
    ports: tuple[str, int, int],
) -> None:
    """Released: a connection opened while redirected still reaches green, new ones production."""
    host, prod, green = ports
    table = table_name(f"rutest-{uuid.uuid4().hex[:8]}")
    kept = aiohttp.TCPConnector(limit=1)
    fresh = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=kept) as keepalive,
        aiohttp.ClientSession(connector=fresh) as plain,
    ):
        try:
            await redirect(table, prod, green)
            assert await who(keepalive, host, prod) == "green"
        finally:
            await remove(table)
        assert await who(plain, host, prod) == "production"
        assert await who(keepalive, host, prod) == "green"


async def test_the_conntrack_table_stays_one_rule_and_is_no_redirect() -> None:
    """Every redirect installs the tracking table, idempotently; release and target ignore it."""
    table = table_name(f"rutest-{uuid.uuid4().hex[:8]}")
    try:
        await redirect(table, free_port(), free_port())
        await redirect(table, free_port(), free_port())
    finally:
        await remove(table)
    assert await target(table) is None
    listed = await _nft(None, "list", "table", "inet", TRACK_TABLE)
    assert listed.count("ct state new") == 1
    assert "redirect" not in listed


@pytest.fixture(params=["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def listeners(request: pytest.FixtureRequest) -> Iterator[tuple[str, socket.socket, socket.socket]]:
    """A "production" and a "green" listening socket on loopback (IPv4 or IPv6)."""
    host: str = request.param
    made = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.bind((host, free_port()))
        sock.listen(8)
        made.append(sock)
    yield host, made[0], made[1]
    for sock in made:
        sock.close()


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def client(host: str, source: int, port: int) -> socket.socket:
    """A connection to ``port`` from the source port ``source``."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.settimeout(2)
    try:
        sock.bind((host, source))
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def reset_by(listener: socket.socket, host: str, source: int, port: int) -> None:
    """A connection to ``port`` that ``listener`` accepts and resets, its request unread (as a
    server's exit does)."""
    with client(host, source, port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        listener.settimeout(2)
        accepted, _ = listener.accept()
        accepted.close()
        with pytest.raises(ConnectionResetError):
            sock.recv(1)


def lands(host: str, source: int, port: int, **listening: socket.socket) -> str:
    """Where a new connection from ``source`` to ``port`` lands: the name of the listener
    that gets it, or "refused"."""
    try:
        sock = client(host, source, port)
    except ConnectionRefusedError:
        return "refused"
    with sock:
        ready, _, _ = select.select(list(listening.values()), [], [], 2)
        assert len(ready) == 1
        accepted, _ = ready[0].accept()
        accepted.close()
        return next(name for name, listener in listening.items() if listener is ready[0])


async def test_a_connection_green_reset_misroutes_none_once_forgotten(
    listeners: tuple[str, socket.socket, socket.socket],
) -> None:
    """A connection redirected to green and reset by it: a new one from its source port is
    refused at green's closed port until forgotten, then reaches production; a live one stays."""
    host, prod, green = listeners
    prod_port, green_port = port_of(prod), port_of(green)
    table = table_name(f"rutest-{uuid.uuid4().hex[:8]}")
    source = free_port()
    try:
        await redirect(table, prod_port, green_port)
        reset_by(green, host, source, prod_port)
        live = client(host, free_port(), prod_port)
        on_green, _ = green.accept()
    finally:
        await remove(table)
    with live, on_green:
        green.close()  # green stopped: what it accepted still runs
        assert lands(host, source, prod_port, production=prod) == "refused"
        handoff = PortHandoff(LocalFirewall(), "app", prod_port, green_port)
        with capture_logs() as logs:
            await handoff.forget(green_port)
        (line,) = [e for e in logs if e["event"] == "handoff.conntrack_forgotten"]
        assert line["removed"] == 1
        assert lands(host, source, prod_port, production=prod) == "production"
        live.sendall(b"x")
        assert on_green.recv(1) == b"x"


async def test_a_connection_blue_reset_misroutes_none_once_forgotten(
    listeners: tuple[str, socket.socket, socket.socket],
) -> None:
    """A connection blue reset before the redirect: a new one from its source port skips the
    redirect to blue's closed port until forgotten, then reaches green."""
    host, blue, green = listeners
    prod_port, green_port = port_of(blue), port_of(green)
    table = table_name(f"rutest-{uuid.uuid4().hex[:8]}")
    source = free_port()
    # The tool's conntrack table is there, as after any handoff: IPv6 flows are tracked.
    await _nft(_tracking())
    reset_by(blue, host, source, prod_port)
    try:
        await redirect(table, prod_port, green_port)
        blue.close()  # blue stopped, in the switch
        assert lands(host, source, prod_port, green=green) == "refused"
        assert await LocalFirewall().forget(prod_port, prod_port) == 1
        assert lands(host, source, prod_port, green=green) == "green"
    finally:
        await remove(table)


@pytest.mark.parametrize(
    ("error", "never_ran"),
    [
        (EngineError("create", "h", 500, "mkdir /x-init: no space left on device"), True),
        (EngineError("start", "h", 500, "write /x/hostconfig.json: no space left on device"), True),
        (EngineError("wait", "h", 500, "the engine went away"), False),
        (EngineUnavailable("Server disconnected"), False),
    ],
    ids=["create-refused", "start-refused", "wait-failed", "engine-away"],
)
async def test_a_helper_the_engine_refused_is_told_from_one_cut_short(
    error: EngineError, never_ran: bool
) -> None:
    """An engine that answers no to a helper's create or start raises HelperNotRun (nothing
    of it ran); a failure later, or an engine that does not answer, a plain HandoffError."""
    engine = FakeEngine({"img"})
    engine.failing["run_once"] = error
    with pytest.raises(HandoffError) as raised:
        await Helper(engine, "img", service="app").run("nft", "list", "tables")
    assert isinstance(raised.value, HelperNotRun) == never_ran
    assert str(raised.value).startswith("the nft helper could not run: ")


async def test_a_helper_with_no_image_to_run_never_reaches_the_engine() -> None:
    """With no container of the service to lend its image, a helper is refused before any
    container is made, and the host's redirect reads as none (none could hide a green)."""
    engine = FakeEngine()
    with pytest.raises(HelperNotRun, match="no image to run it in"):
        await Helper(engine, "", service="app").run("nft", "list", "tables")
    firewall = EngineFirewall(engine, "", service="app", bypass_port=1)
    assert await firewall.target("rolling_update_app", 80) is None
    assert engine.runs == []
