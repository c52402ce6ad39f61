"""What a client saw while the redirect was in place: production's port probed through it."""

from __future__ import annotations

import anyio

from rolling_update._deploy.context import DeployContext
from rolling_update._deploy.session import client_session
from rolling_update._observe import measures
from rolling_update._watch.probe import probe


async def measure_handoff(ctx: DeployContext, *, interval: float = 0.05) -> None:
    """While the redirect is in place, probe production's port as a client would (unmarked:
    through the redirect) and count the answers that failed; runs until cancelled."""
    url = ctx.url(ctx.config.service.port, ctx.config.health.path, as_client=True)
    async with client_session() as client:
        while True:  # cancelled with the deploy's task group
            if ctx.handoff_active:
                answer = await probe(client, url, ctx.config.health)
                ctx.measured[measures.HANDOFF_REQUESTS] = (
                    ctx.measured.get(measures.HANDOFF_REQUESTS, 0) + 1
                )
                failed = ctx.measured.get(measures.HANDOFF_FAILED_REQUESTS, 0)
                ctx.measured[measures.HANDOFF_FAILED_REQUESTS] = failed + (answer.status is None)
            await anyio.sleep(interval)
