"""The facts a deploy's steps hand on, each a frozen record.

The deploy starts with two: the :class:`~rolling_update._deploy.release.Release`
(what is deployed) and :class:`Preflight` (what the checks before the first change
found). Each step then *gives* the records it produces (``ctx.give(record)``, again
with a new record when a fact changes, as the switch does while it goes) and *gets*
the ones it needs (``ctx.get(Kind)``). A step says which it needs and gives
(``needs``/``gives`` class attributes); the plan is checked before the deploy
changes anything, so that a step whose input no earlier step gives is refused by
name instead of failing half-way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rolling_update._deploy.twin import Twin
from rolling_update._engine.model import ContainerInfo
from rolling_update._errors import ConfigError
from rolling_update._watch.probe import HealthBaseline


@dataclass(frozen=True)
class Preflight:
    """What the checks before the first change found."""

    blue: ContainerInfo | None
    blue_health: HealthBaseline | None
    """Blue's health as found: what a rollback must bring back."""
    blue_raw: dict[str, Any] | None = None
    """Blue's inspect as found (its twin is made from it; the log shows the diff)."""
    twin: Twin | None = None
    handoff: bool = False
    """The switch hands production's port over in the kernel (see _handoff)."""

    @property
    def blue_serving(self) -> str | None:
        """Id of the blue found running: a rollback must leave it serving."""
        return self.blue.id if self.blue is not None and self.blue.running else None


@dataclass(frozen=True)
class GreenStarted:
    """Green runs beside blue (``StartGreen``)."""

    id: str
    started: float
    """Monotonic time it started: the two-container window opens."""
    since_nano: int
    """Engine time (ns) just before it was created: where its events begin."""


@dataclass(frozen=True)
class BlueChecked:
    """Whether blue's image passed ``migrate.blue_check`` after the migrations: a rollback
    after the switch restarts blue only if it could boot (``RunMigrations``)."""

    bootable: bool


@dataclass(frozen=True)
class BlueLastServed:
    """Monotonic time of blue's last good answer before it was stopped (the tick boundary):
    where the downtime window of a restart switch begins."""

    at: float


@dataclass(frozen=True)
class Switched:
    """How far the switch got; given again as it goes, so that its undo knows (``Switch``)."""

    blue_id: str | None = None
    """The production container found when the switch began, if any."""
    blue_was_running: bool = False
    production_id: str | None = None
    """The new production container, once created."""
    began: float | None = None
    """Monotonic time blue began to stop."""
    told_to_drain: bool = False
    """``switch.drain_signal`` or ``drain_request`` may have reached blue: kept running, it
    would go on closing its connections, so an undo restarts it."""


@dataclass(frozen=True)
class Redirected:
    """Production's port and the redirect to green (``Redirect``, ``Release``)."""

    active: bool
    """The redirect is in place now (a client's view is measured meanwhile)."""
    began: float | None = None
    ended: float | None = None
    """Monotonic time the redirect was removed: green's connections drain from then."""


@dataclass(frozen=True)
class ShiftStep:
    """One step of the gradual shift: its share, when it began (monotonic), how long it was
    held and what its gate found (``passed``, or why it failed)."""

    share: int
    began: float
    held: float | None = None
    gate: str | None = None


@dataclass(frozen=True)
class Shifted:
    """The gradual shift's steps so far (``ShiftTraffic``)."""

    steps: tuple[ShiftStep, ...] = ()


@dataclass(frozen=True)
class Verified:
    """The new production container's health answer once verified (``VerifyProduction``)."""

    health: Any


def check_plan(steps: Sequence[object]) -> None:
    """Refuse a plan in which a step needs a record no earlier step gives (before any change).

    A step says what it needs and gives with ``needs`` and ``gives`` class attributes
    (tuples of record types); a step without them needs and gives nothing.
    """
    given: set[type] = set()
    for step in steps:
        name = getattr(step, "name", type(step).__name__)
        for kind in getattr(step, "needs", ()):
            if kind not in given:
                later = [
                    getattr(s, "name", type(s).__name__)
                    for s in steps
                    if kind in getattr(s, "gives", ())
                ]
                where = f" ({', '.join(later)} gives it, after it)" if later else ""
                raise ConfigError(
                    f"step {name!r} needs {kind.__name__}, which no earlier step gives{where}",
                    key="plan",
                )
        given.update(getattr(step, "gives", ()))
