"""How one host of a rollout ended (carried by ``RolloutFailed`` too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class HostOutcome:
    """How one host ended: ``deployed``, ``rolled-back``, ``refused``, ``interrupted``,
    ``rollback-incomplete``, ``failed-after-commit``, ``not-started``, ``reverted``
    (rollback-all took it back) or ``revert-failed``."""

    host: str
    result: str = "not-started"
    from_version: str | None = None
    to_version: str | None = None
    reason: str | None = None
    seconds: float = 0.0
    measured: dict[str, Any] = field(default_factory=dict)
