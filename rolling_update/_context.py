"""What the steps of one deploy share: the engine, an HTTP session, and facts.

Each step reads the facts earlier steps recorded (the image, green's id, the
renamed blue) and records its own, so that its ``compensate()`` undoes exactly
what its ``run()`` did, and later steps can build on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ._config import Config
from ._engine import LABEL_DEPLOY, LABEL_MANAGED, LABEL_ROLE, LABEL_SERVICE, LABEL_VERSION, Engine


@dataclass
class DeployContext:
    config: Config
    engine: Engine
    http: aiohttp.ClientSession
    deploy_id: str
    version: str
    image: str
    env: dict[str, str] = field(repr=False)
    """Env of every container: the env-file, then ``[env]`` on top."""

    green_id: str | None = None
    green_started: float | None = None
    blue_id: str | None = None
    """The production container found when the switch began, if any."""
    blue_was_running: bool = False
    blue_renamed: bool = False
    production_id: str | None = None
    last_blue_ok: float | None = None
    """Monotonic time of blue's last good answer before it was stopped."""
    switch_began: float | None = None
    final_health: Any = None
    measured: dict[str, Any] = field(default_factory=dict)
    """Figures reported at the end of the deploy (seconds, bytes, counts)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Free space for custom steps to pass facts along."""

    def url(self, port: int, path: str) -> str:
        return f"http://{self.config.service.host}:{port}{path}"

    def labels(self, role: str) -> dict[str, str]:
        return {
            LABEL_MANAGED: "true",
            LABEL_SERVICE: self.config.service.name,
            LABEL_ROLE: role,
            LABEL_DEPLOY: self.deploy_id,
            LABEL_VERSION: self.version,
        }

    def container_env(
        self, port: int | None, overrides: dict[str, str] | None = None
    ) -> dict[str, str]:
        env = dict(self.env)
        if port is not None:
            env.update(dict.fromkeys(self.config.service.port_env, str(port)))
        env.update(overrides or {})
        return env

    @property
    def old_name(self) -> str:
        """Name blue carries between the switch and its removal."""
        return f"{self.config.service.name}-old"
