"""What a deploy talks through: the engine and the HTTP client, each given or opened here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from rolling_update._config.settings import EngineConfig
from rolling_update._engine.docker import DockerEngine
from rolling_update._engine.model import Engine
from rolling_update._handoff.nft import can_mark, marked_socket


@asynccontextmanager
async def open_engine(engine: Engine | None, limits: EngineConfig) -> AsyncIterator[Engine]:
    """The given engine, or a :class:`DockerEngine` opened (and closed) here, its calls
    bounded by ``limits``."""
    if engine is not None:
        await engine.ping()
        yield engine
        return
    async with DockerEngine(limits=limits) as docker:
        yield docker


def http_session() -> aiohttp.ClientSession:
    """The tool's HTTP client: a fresh connection per probe (availability is what we
    measure), each socket marked, where it can be, so that the handoff's redirect lets the
    tool's own probes reach the real production port."""
    connector = aiohttp.TCPConnector(
        force_close=True, socket_factory=marked_socket if can_mark() else None
    )
    return aiohttp.ClientSession(connector=connector, trust_env=False)


def client_session() -> aiohttp.ClientSession:
    """An HTTP client as the service's clients are: its sockets unmarked, so that the
    handoff's redirect (or a share of it) applies to them; a fresh connection per request."""
    connector = aiohttp.TCPConnector(force_close=True)
    return aiohttp.ClientSession(connector=connector, trust_env=False)


@asynccontextmanager
async def open_http(http: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
    """The given HTTP client (left open: it is the caller's), or :func:`http_session`, closed
    here. A client given should, like ours, open a fresh connection per request."""
    if http is not None:
        yield http
        return
    async with http_session() as own:
        yield own
