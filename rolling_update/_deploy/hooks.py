"""Hooks, as in Kamal: shell commands at pre-build, pre-deploy, post-deploy, post-rollback.

Each runs with ``/bin/sh -c`` and the deploy's facts in its environment
(``RU_SERVICE``, ``RU_DEPLOY_ID``, ``RU_VERSION``, ``RU_IMAGE``,
``RU_FROM_VERSION``; the post hooks also ``RU_KIND``, ``RU_RESULT``,
``RU_REASON``, ``RU_SECONDS``). A pre hook that fails stops the deploy before
anything changes (exit 2); a post hook's failure is logged, never a reason to
roll back. Output goes to the log (``hook.log``), secrets blanked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio
import structlog

from rolling_update._config.settings import Config
from rolling_update._deploy.process import run_logged
from rolling_update._errors import PreflightError

if TYPE_CHECKING:
    from rolling_update._deploy.release import Release
    from rolling_update._observe.history import HistoryEntry


async def _run(cfg: Config, name: str, command: str, env: Mapping[str, str]) -> int:
    structlog.get_logger().info("hook.started", hook=name)
    with anyio.fail_after(cfg.hooks.timeout):
        return await run_logged(
            ["/bin/sh", "-c", command],
            env={**os.environ, **env},
            cwd=None,
            event="hook.log",
            hook=name,
        )


async def run_pre_hook(
    cfg: Config, name: str, deploy_id: str, release: Release, extra: Mapping[str, str]
) -> None:
    """Run the pre hook ``name`` (pre_build, pre_deploy); a failure is a PreflightError."""
    command = getattr(cfg.hooks, name)
    if not command:
        return
    env = {
        "RU_SERVICE": cfg.service.name,
        "RU_DEPLOY_ID": deploy_id,
        "RU_VERSION": release.version,
        "RU_IMAGE": release.image,
        **extra,
    }
    try:
        code = await _run(cfg, name, command, env)
    except TimeoutError:
        raise PreflightError(f"the {name} hook ran past {cfg.hooks.timeout:g}s") from None
    except OSError as exc:
        raise PreflightError(f"the {name} hook could not run: {exc.strerror}") from None
    if code != 0:
        raise PreflightError(f"the {name} hook exited with code {code}")


async def run_post_hook(cfg: Config, name: str, entry: HistoryEntry) -> None:
    """Run the post hook ``name`` with the run's outcome; failures are only logged."""
    command = getattr(cfg.hooks, name)
    if not command:
        return
    env = {
        "RU_SERVICE": entry.service,
        "RU_DEPLOY_ID": entry.id,
        "RU_KIND": entry.kind,
        "RU_VERSION": entry.to_version or "",
        "RU_IMAGE": cfg.image.name.format(version=entry.to_version or ""),
        "RU_FROM_VERSION": entry.from_version or "",
        "RU_RESULT": entry.result,
        "RU_REASON": entry.reason or "",
        "RU_SECONDS": str(entry.seconds),
    }
    log = structlog.get_logger()
    try:
        code = await _run(cfg, name, command, env)
    except (TimeoutError, OSError) as exc:
        log.warning("hook.failed", hook=name, error=str(exc) or type(exc).__name__)
        return
    if code != 0:
        log.warning("hook.failed", hook=name, error=f"exited with code {code}")
