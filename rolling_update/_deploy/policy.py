"""Which containers the tool may remove: one policy for deploy, rollback and recover.

The tool removes a container only when the labels say it made it for this
service (never by name alone). A stale green or migration container of ours
is always disposable (neither ever serves production); any other container
of ours only when stopped. Beyond that, only the caller undoing its own
deploy (``remove_ours``) or ``recover`` finishing the deploy its journal
names removes anything. Everything else in the way is the operator's.
"""

from __future__ import annotations

from collections.abc import Callable

from rolling_update._engine.model import (
    LABEL_DEPLOY,
    LABEL_ROLE,
    LABEL_SERVICE,
    ContainerInfo,
    Engine,
)
from rolling_update._errors import EngineError, RollingUpdateError

_DISPOSABLE = {"green", "migrate"}


def in_the_way(info: ContainerInfo | None, service: str) -> str | None:
    """Why ``info`` (holding a name the tool needs) must not be removed; ``None`` if it may."""
    if info is None:
        return None
    if not info.managed or info.labels.get(LABEL_SERVICE) != service:
        return (
            f"a container named {info.name} exists and was not made by rolling_update for {service}"
        )
    if info.running and info.labels.get(LABEL_ROLE) not in _DISPOSABLE:
        return f"{info.name} (made by an earlier deploy) is running"
    return None


async def clear_name(
    engine: Engine, name: str, service: str, error: Callable[[str], RollingUpdateError]
) -> None:
    """Free ``name``: remove a stopped leftover of ours, or raise ``error`` saying why not."""
    info = await engine.inspect(name)
    why = in_the_way(info, service)
    if why is not None:
        raise error(f"{why}; remove or rename it, or run `rolling-update recover`")
    if info is not None:
        await engine.remove(info.id)


async def remove_ours(engine: Engine, name: str, deploy_id: str, *, grace: int = 0) -> None:
    """Remove the container ``name`` if this deploy made it (labels, not names, tell).

    With ``grace``, a running one is stopped first (SIGTERM, then SIGKILL after
    ``grace`` s), so that requests it is serving finish instead of being reset.
    """
    found = await engine.inspect(name)
    if found is not None and found.managed and found.labels.get(LABEL_DEPLOY) == deploy_id:
        if grace and found.running:
            await engine.stop(found.id, grace=grace)
        await engine.remove(found.id)


async def rename_blue(engine: Engine, container_id: str, name: str, *, grace: int) -> bool:
    """Rename blue (back) to ``name``; whether it had to be stopped for that.

    Killed under the tool (the kernel's OOM killer), blue waits between its restart
    policy's attempts with no network sandbox, and the engine refuses to rename it
    ("sandbox ... not found"). Stopped, its restart loop ends and the rename goes through;
    the caller starts it again where it ran."""
    stopped = await _end_restart_loop(engine, await engine.inspect(container_id), grace)
    try:
        await engine.rename(container_id, name)
    except EngineError:
        # Killed again between the look and the rename.
        if not await _end_restart_loop(engine, await engine.inspect(container_id), grace):
            raise
        await engine.rename(container_id, name)
        return True
    return stopped


async def _end_restart_loop(engine: Engine, found: ContainerInfo | None, grace: int) -> bool:
    if found is None or found.status != "restarting":
        return False
    await engine.stop(found.id, grace=grace)
    return True
