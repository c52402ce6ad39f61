"""Shared fixtures. Docker fixtures live in tests/support.py and need a running engine."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # aiodocker and aiohttp are asyncio libraries.
    return "asyncio"


pytest_plugins = ["tests.support", "tests.engineproxy"]


@pytest.fixture(scope="session")
def host2_swept() -> None:
    """What a run cut short left on ru-host2, swept before this session's first use of it."""
    from tests.leftovers import sweep_host2  # after pytest_plugins: tests.support is rewritten

    sweep_host2()


@pytest.fixture(scope="session")
def fault_engine_swept() -> None:
    """What a run cut short left on the fault engine, swept before this session's first use."""
    from tests.leftovers import sweep_fault_engine

    sweep_fault_engine()


# Tests marked `realbrain` deploy the real Brain of ../shared/realbrain (RU_REALBRAIN).
# Without that directory (a user's checkout) they are deselected and the summary says so
# in one line; in CI (CI=true) its absence fails the session instead.
_NOT_RUN = pytest.StashKey[str]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from tests.realbrain import REALBRAIN  # after pytest_plugins: tests.support is rewritten

    if REALBRAIN.is_dir():
        return
    real = [item for item in items if item.get_closest_marker("realbrain")]
    if not real:
        return
    where = (
        f"RU_REALBRAIN={REALBRAIN}"
        if os.environ.get("RU_REALBRAIN")
        else f"../shared/realbrain ({REALBRAIN})"
    )
    message = f"{len(real)} real-Brain test{'s' * (len(real) != 1)} not run: {where} missing"
    if os.environ.get("CI", "").lower() == "true":
        raise pytest.UsageError(f"{message}, and CI=true requires them")
    items[:] = [item for item in items if not item.get_closest_marker("realbrain")]
    config.hook.pytest_deselected(items=real)
    config.stash[_NOT_RUN] = message


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    message = terminalreporter.config.stash.get(_NOT_RUN, None)
    if message:
        terminalreporter.write_line(message, yellow=True, bold=True)
