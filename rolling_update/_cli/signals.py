"""SIGINT and SIGTERM: the first one cancels the work in flight, whose rollback is shielded."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import structlog

from rolling_update._watch.tasks import task_group


@dataclass
class Interrupt:
    signum: int | None = None


async def interruptible(work: Callable[[], Awaitable[object]], interrupt: Interrupt) -> None:
    """Run ``work``; the first SIGINT/SIGTERM cancels it (its rollback is shielded)."""
    log = structlog.get_logger()
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with task_group() as tg:
            scope = anyio.CancelScope()

            async def on_signals() -> None:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if interrupt.signum is None:
                        interrupt.signum = signum
                        log.warning("deploy.interrupted", signal=name, action="rolling back")
                        scope.cancel()
                    else:
                        log.warning(
                            "deploy.interrupted",
                            signal=name,
                            action="ignored: the rollback finishes within its deadlines",
                        )

            tg.start_soon(on_signals)
            try:
                with scope:
                    await work()
            finally:
                if interrupt.signum is not None:
                    # The outcome is settled: a late repeat must not kill the
                    # process while it reports. Held, it is dropped at exit.
                    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            tg.cancel_scope.cancel()
