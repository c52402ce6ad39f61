"""The kernel handoff itself, on loopback: nftables moves new connections, not old ones.

IPv4 and IPv6 alike: a connection open when the redirect goes in stays on production, one
opened while it is in place stays on green when it goes (the tool's conntrack table)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from rolling_update._handoff.nft import (
    TRACK_TABLE,
    _nft,
    marked_socket,
    redirect,
    remove,
    table_name,
    target,
)
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
            assert await target(table) == green
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
