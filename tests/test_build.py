"""The build step's one line when a build fails (no engine: an external build command)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from rolling_update import BuildFailed
from rolling_update.testing import FakeEngine
from steps.build import BuildImage
from tests.support import unit_config, unit_context

pytestmark = pytest.mark.anyio


async def failed_build(tmp_path: Path, script: str) -> str:
    cfg = unit_config(tmp_path, build={"command": ["sh", "-c", script]})
    async with aiohttp.ClientSession() as http:
        ctx = unit_context(cfg, FakeEngine(), http)
        with pytest.raises(BuildFailed) as caught:
            await BuildImage(cfg.build).run(ctx)
    return str(caught.value)


async def test_a_build_that_met_a_full_disk_says_so(tmp_path: Path) -> None:
    """A build that failed on ENOSPC says the disk is full, with the line that met it, even
    when that line is not its last."""
    script = "echo 'npm ERR! nospc ENOSPC: No space left on device, write'; echo 'see log'; exit 1"
    assert await failed_build(tmp_path, script) == (
        "build command 'sh' exited with code 1; the disk is full: "
        "npm ERR! nospc ENOSPC: No space left on device, write"
    )


async def test_a_build_that_failed_otherwise_says_only_that(tmp_path: Path) -> None:
    """A build that failed for another reason keeps its own line."""
    assert await failed_build(tmp_path, "echo compiling; exit 4") == (
        "build command 'sh' exited with code 4"
    )
