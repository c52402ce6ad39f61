"""Running a command whose output belongs in the deploy's log (builds, hooks)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog

from rolling_update._observe.logs import redactor


async def run_logged(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    event: str,
    on_line: Callable[[str], None] | None = None,
    **fields: Any,
) -> int:
    """Run ``argv``, logging each output line as ``event`` (secrets blanked, with the time
    it has run) and handing it to ``on_line``; return its exit code. ``OSError`` when it
    cannot start; the caller bounds it in time."""
    log = structlog.get_logger()
    began = time.monotonic()

    def emit(raw: bytes) -> None:
        line = redactor.scrub(raw.decode(errors="replace").rstrip())
        log.info(event, line=line, elapsed=round(time.monotonic() - began, 1), **fields)
        if on_line is not None:
            on_line(line)

    process = await anyio.open_process(list(argv), env=dict(env), cwd=cwd, stderr=subprocess.STDOUT)
    async with process:
        assert process.stdout is not None
        buffered = b""
        async for chunk in process.stdout:
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                emit(line)
        if buffered.strip():
            emit(buffered)
        return await process.wait()
