"""Steps hand on frozen records; a step needing one no earlier step gives is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from rolling_update import Config, ConfigError, deploy
from rolling_update._config.settings import parse_config
from rolling_update._deploy.plan import default_plan
from rolling_update._deploy.records import GreenStarted, Switched, check_plan
from rolling_update.testing import FakeEngine

pytestmark = pytest.mark.anyio


def config(tmp_path: Path) -> Config:
    (tmp_path / "p.json").write_text('{"version": "2"}')
    data = {
        "service": {"name": "app", "green_name": "app-green", "port": 1, "green_port": 2},
        "image": {"name": "app:{version}", "version_file": "p.json"},
        "build": {"enabled": False},
        "migrate": {"commands": []},
        "state": {"dir": "state"},
    }
    return parse_config(data, base_dir=tmp_path, environ={}, source="t.toml")


def test_the_default_plan_gives_every_record_before_a_step_needs_it(tmp_path: Path) -> None:
    """Each built-in step's needs are given by a step before it, in the reference order."""
    plan = default_plan(config(tmp_path))
    check_plan(plan)
    needed = {kind for step in plan for kind in getattr(step, "needs", ())}
    assert {GreenStarted, Switched} <= needed


async def test_a_step_before_what_it_needs_is_refused_before_any_change(tmp_path: Path) -> None:
    """Green's health wait ahead of green's start: ConfigError naming both; the engine untouched."""
    cfg = config(tmp_path)
    plan = default_plan(cfg)
    names = [s.name for s in plan]
    plan.insert(0, plan.pop(names.index("green-health")))
    engine = FakeEngine()
    with pytest.raises(ConfigError, match=r"'green-health' needs GreenStarted.*start-green"):
        await deploy(cfg, steps=plan, engine=engine)
    assert engine.calls == []
