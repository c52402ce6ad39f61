"""The built-in deploy steps; each has ``run(ctx)`` and ``compensate(ctx)``.

Compose them, with steps of your own, into a list for
:func:`rolling_update.deploy`; :func:`rolling_update.default_plan` is the
reference order.
"""

from .actions import RunActions
from .build import BuildImage
from .cleanup import RemoveOld
from .green import AwaitGreenHealthy, StartGreen
from .handoff import Redirect, Release
from .migrate import RunMigrations
from .shift import ShiftTraffic
from .switch import Soak, Switch, VerifyProduction
from .tags import TagImage
from .tick import AwaitTickBoundary, wait_for_tick_boundary

__all__ = [
    "AwaitGreenHealthy",
    "AwaitTickBoundary",
    "BuildImage",
    "Redirect",
    "Release",
    "RemoveOld",
    "RunActions",
    "RunMigrations",
    "ShiftTraffic",
    "Soak",
    "StartGreen",
    "Switch",
    "TagImage",
    "VerifyProduction",
    "wait_for_tick_boundary",
]
