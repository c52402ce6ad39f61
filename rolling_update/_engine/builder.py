"""Which builder a build uses: the engine's BuildKit through the docker CLI, or the classic API.

Asked by the preflight (a ``builder = "buildkit"`` that cannot be had refuses the
deploy before anything changes), by ``plan`` (to say which will run) and by the build.
"""

from __future__ import annotations

import shutil

import anyio

from rolling_update._config.settings import BuildConfig
from rolling_update._errors import ConfigError

# A CLI from 23.0 on builds with BuildKit only through its buildx plugin; older
# ones (18.09 to 22.x) drive the engine's BuildKit themselves with DOCKER_BUILDKIT=1.
_BUILDX_FROM = 23
_PROBE_LIMIT = 10.0


async def _output(argv: list[str]) -> str | None:
    try:
        with anyio.fail_after(_PROBE_LIMIT):
            result = await anyio.run_process(argv, check=False)
    except (OSError, TimeoutError):
        return None
    return result.stdout.decode(errors="replace").strip() if result.returncode == 0 else None


async def choose_builder(cfg: BuildConfig) -> tuple[str, str]:
    """``("buildkit" | "classic", why)`` for ``cfg.builder``; raises if buildkit cannot be had."""
    if cfg.builder == "classic":
        return "classic", "build.builder = classic"
    cli = shutil.which(cfg.docker_cli)
    why_not = None
    if cli is None:
        why_not = f"no docker CLI {cfg.docker_cli!r} (build.docker_cli)"
    else:
        version = await _output([cli, "version", "--format", "{{.Client.Version}}"])
        major = int(version.split(".")[0]) if version and version[0].isdigit() else None
        if major is None:
            why_not = f"{cli} does not reach the engine"
        elif major >= _BUILDX_FROM and await _output([cli, "buildx", "version"]) is None:
            why_not = f"{cli} {version} builds with BuildKit only through buildx, which it lacks"
    if why_not is None:
        return "buildkit", f"the engine's BuildKit through {cli}"
    if cfg.builder == "buildkit":
        raise ConfigError(f"BuildKit cannot be used: {why_not}", key="build.builder")
    return "classic", f"BuildKit unavailable ({why_not}): the engine API's classic builder"
