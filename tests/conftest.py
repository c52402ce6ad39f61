"""Shared fixtures. Docker fixtures live in tests/support.py and need a running engine."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # aiodocker and aiohttp are asyncio libraries.
    return "asyncio"


pytest_plugins = ["tests.support"]
