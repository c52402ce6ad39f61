"""The kernel handoff itself, on loopback: nftables moves new connections, not old ones."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from rolling_update._handoff import marked_socket, redirect, remove, table_name, target
from tests.support import free_port

pytestmark = pytest.mark.anyio


async def serving(name: str) -> tuple[web.AppRunner, int]:
    async def answer(request: web.Request) -> web.Response:
        return web.Response(text=name)

    app = web.Application()
    app.router.add_get("/", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


@pytest.fixture
async def ports() -> AsyncIterator[tuple[int, int]]:
    """A "production" and a "green" server on loopback."""
    prod, prod_port = await serving("production")
    green, green_port = await serving("green")
    yield prod_port, green_port
    await prod.cleanup()
    await green.cleanup()


async def who(session: aiohttp.ClientSession, port: int) -> str:
    async with session.get(f"http://127.0.0.1:{port}/") as response:
        return await response.text()


async def test_new_connections_move_marked_and_established_ones_stay(
    ports: tuple[int, int],
) -> None:
    """Redirected: new connections reach green; marked and already-open ones reach production."""
    prod, green = ports
    table = table_name(f"rutest-{uuid.uuid4().hex[:8]}")
    fresh = aiohttp.TCPConnector(force_close=True)
    kept = aiohttp.TCPConnector(limit=1)
    marked = aiohttp.TCPConnector(force_close=True, socket_factory=marked_socket)
    async with (
        aiohttp.ClientSession(connector=fresh) as plain,
        aiohttp.ClientSession(connector=kept) as keepalive,
        aiohttp.ClientSession(connector=marked) as tool,
    ):
        assert await who(keepalive, prod) == "production"  # opened before the redirect
        try:
            await redirect(table, prod, green)
            assert await target(table) == green
            assert await who(plain, prod) == "green"
            assert await who(keepalive, prod) == "production"
            assert await who(tool, prod) == "production"
        finally:
            await remove(table)
        assert await target(table) is None
        assert await who(plain, prod) == "production"
