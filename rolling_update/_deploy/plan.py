"""The reference plan: the built-in steps in the order a blue-green deploy takes them.

The ``steps`` package is imported whole and its classes are looked up when the
plan is made, not when this module is imported: importing a step module first
runs ``rolling_update/__init__`` (the step imports :mod:`rolling_update.toolkit`),
which imports this module while that step module is still half-made.

``steps`` is always the package installed beside ``rolling_update``: ``python -m``
puts the working directory first on ``sys.path``, and a service's own repository
may well have a ``steps/`` (or ``steps.py``) of its own.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from rolling_update._config.settings import Config
from rolling_update._deploy.context import DeployContext
from rolling_update._deploy.saga import Step

PlanFactory = Callable[[Config], Sequence[Step[DeployContext]]]
"""Makes a deploy's steps from its config; ``deploy``, ``rollback`` and ``rollout`` take one,
so a plan of custom steps runs on every host (each with its own config) and in a rollback."""

BUILTIN_STEPS = Path(__file__).resolve().parent.parent.parent / "steps" / "__init__.py"


def builtin_steps() -> ModuleType:
    """The built-in ``steps`` package, imported from beside ``rolling_update`` by its path."""
    found = sys.modules.get("steps")
    if found is not None:
        where = getattr(found, "__file__", None)
        if where is not None and Path(where).resolve() == BUILTIN_STEPS:
            return found  # already imported (perhaps still being imported: see above)
        raise ImportError(
            f"a module named 'steps' ({where or found!r}) was imported before rolling_update; "
            f"its built-in steps package ({BUILTIN_STEPS.parent}) has that name: rename yours"
        )
    spec = importlib.util.spec_from_file_location(
        "steps", BUILTIN_STEPS, submodule_search_locations=[str(BUILTIN_STEPS.parent)]
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"rolling_update's steps package is missing: {BUILTIN_STEPS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["steps"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["steps"]
        raise
    return module


if TYPE_CHECKING:
    import steps
else:
    steps = builtin_steps()


def default_plan(cfg: Config) -> list[Step[DeployContext]]:
    """The reference blue-green plan, in order; a plain list to edit or extend."""

    plan: list[Step[DeployContext]] = []
    if cfg.build.enabled:
        plan.append(steps.BuildImage(cfg.build))
    if cfg.migrate.commands:
        plan.append(steps.RunMigrations(cfg.migrate, cfg.service))
    plan += [
        steps.StartGreen(cfg.service, cfg.green),
        steps.AwaitGreenHealthy(cfg.service, cfg.health),
    ]
    if cfg.switch.shares:
        # Before the tick boundary and blue's drain: between steps blue keeps its background
        # work (green was drained at its first answer); both happen once, before 100%.
        plan.append(steps.ShiftTraffic(cfg.service, cfg.switch, cfg.health))
    plan.append(steps.AwaitTickBoundary(cfg.service, cfg.tick, cfg.health))
    if cfg.actions_at("before-switch") or cfg.actions_at("rollback"):
        plan.append(steps.RunActions("before-switch", undo="rollback"))
    if cfg.image.tags:
        plan.append(steps.TagImage(cfg.image))
    plan += [
        steps.Redirect(cfg.service, cfg.health),
        steps.Switch(cfg.service, cfg.tick, cfg.health, cfg.verify),
        steps.VerifyProduction(cfg.service, cfg.health, cfg.verify),
        steps.Release(cfg.service),
        steps.Soak(cfg.service, cfg.health, cfg.verify),
    ]
    if cfg.actions_at("after-soak"):
        plan.append(steps.RunActions("after-soak"))
    plan.append(steps.RemoveOld(cfg.service))
    return plan
