"""Task groups that raise their one meaningful error bare, not grouped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup

from rolling_update._errors import RollingUpdateError


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


@asynccontextmanager
async def task_group() -> AsyncIterator[TaskGroup]:
    """An anyio task group that raises its one meaningful error bare, not grouped.

    Our tasks fail for one reason at a time (the container died, the deadline
    passed); callers and users want that error, not an ExceptionGroup.
    """
    try:
        async with anyio.create_task_group() as tg:
            yield tg
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        ours = [e for e in leaves if isinstance(e, RollingUpdateError)]
        errors = [e for e in leaves if isinstance(e, Exception)]
        chosen = (ours or errors or leaves)[0]
        raise chosen from chosen.__cause__
