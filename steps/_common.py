"""Small helpers several steps share."""

from __future__ import annotations

import anyio

from rolling_update._engine import LABEL_DEPLOY, Engine
from rolling_update._errors import PreflightError


async def remove_stale(engine: Engine, name: str) -> None:
    """Remove a container of ours named ``name`` left by an earlier run.

    A container of that name that rolling_update did not make is someone
    else's: refuse rather than destroy it.
    """
    stale = await engine.inspect(name)
    if stale is None:
        return
    if not stale.managed:
        raise PreflightError(
            f"a container named {name} exists and was not made by rolling_update; "
            "remove or rename it"
        )
    await engine.remove(stale.id)


async def remove_ours(engine: Engine, name: str, deploy_id: str) -> None:
    """Remove the container ``name`` if this deploy made it (labels, not names, tell)."""
    found = await engine.inspect(name)
    if found is not None and found.managed and found.labels.get(LABEL_DEPLOY) == deploy_id:
        await engine.remove(found.id)


async def port_in_use(host: str, port: int) -> bool:
    """Whether something already accepts connections on ``host:port``."""
    try:
        with anyio.fail_after(1):
            stream = await anyio.connect_tcp(host, port)
    except (OSError, TimeoutError):
        return False
    await stream.aclose()
    return True
