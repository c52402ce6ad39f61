"""The Python API: composing built-in steps with a custom one and running them."""

from __future__ import annotations

import pytest

from rolling_update import Config, default_plan, deploy, load_config, rollback
from rolling_update.toolkit import DeployContext, RollingUpdateError, Step
from tests.support import Service

pytestmark = [pytest.mark.docker, pytest.mark.anyio]


class ReleaseGate:
    """A custom step: any class with name, title, run() and compensate() will do."""

    name = "release-gate"
    title = "Asking the release gate"

    def __init__(self, *, open_: bool) -> None:
        self.open = open_
        self.journal: list[str] = []

    async def run(self, ctx: DeployContext) -> None:
        self.journal.append(f"asked for {ctx.version}; green is {ctx.green_id is not None}")
        if not self.open:
            raise RollingUpdateError("release gate is closed")

    async def compensate(self, ctx: DeployContext) -> None:
        self.journal.append("undone")


def plan_with_gate(service: Service, gate: ReleaseGate) -> tuple[Config, list[Step[DeployContext]]]:
    """Blue v1 serving, v2 to deploy, and the default plan with ``gate`` before the switch."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    cfg = load_config(service.config())
    plan = default_plan(cfg)
    plan.insert([s.name for s in plan].index("switch"), gate)
    return cfg, plan


async def test_custom_step_failing_rolls_back_the_built_in_steps(service: Service) -> None:
    """A custom step that fails before the switch undoes green; blue keeps serving."""
    gate = ReleaseGate(open_=False)
    cfg, plan = plan_with_gate(service, gate)
    with pytest.raises(RollingUpdateError, match="release gate is closed"):
        await deploy(cfg, steps=plan)
    assert gate.journal == ["asked for 2.0.0; green is True", "undone"]
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]


async def test_custom_step_in_a_successful_plan(service: Service) -> None:
    """An open gate lets the deploy finish; the result carries version, steps and figures."""
    gate = ReleaseGate(open_=True)
    cfg, plan = plan_with_gate(service, gate)
    result = await deploy(cfg, steps=plan)
    assert result.version == "2.0.0"
    assert "release-gate" in [r.name for r in result.steps]
    assert result.health["status"] == "healthy"
    assert gate.journal == ["asked for 2.0.0; green is True"]
    assert service.serving() == "2.0.0"


async def test_a_callers_own_logging_gets_no_secrets(service: Service) -> None:
    """With the caller's structlog set-up (no redactor of ours), container lines stay blanked."""
    import io

    import structlog

    from rolling_update import MigrationFailed

    secret = "pa55-for-api-callers"
    service.write_env_file({"DB_PASSWORD": secret})
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"MIGRATE_FAIL": 1, "ECHO_ENV": "DB_PASSWORD"})
    cfg = load_config(service.config())
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(out),
    )
    try:
        with pytest.raises(MigrationFailed) as caught:
            await deploy(cfg)
    finally:
        structlog.reset_defaults()
    assert '"line": "DB_PASSWORD=***"' in out.getvalue()
    assert secret not in out.getvalue() and secret not in str(caught.value.last_logs)


async def test_the_readme_example_step_runs_in_a_plan(service: Service) -> None:
    """The README's custom step (toolkit imports only) runs inside a real deploy's plan."""
    import re

    from tests.support import ROOT

    readme = (ROOT / "README.md").read_text()
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "toolkit" in b]
    assert "rolling_update._" not in example  # no private imports
    namespace: dict[str, object] = {}
    exec(example.replace("anyio.run(main)", ""), namespace)
    step = namespace["SmokeTest"]()  # type: ignore[operator]
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    cfg = load_config(service.config())
    plan = default_plan(cfg)
    plan.insert([s.name for s in plan].index("soak"), step)
    result = await deploy(cfg, steps=plan)
    assert "smoke" in [r.name for r in result.steps]
    assert service.serving() == "2.0.0"


async def test_a_plan_factory_runs_in_a_deploy_and_in_its_rollback(service: Service) -> None:
    """deploy(plan=...) and rollback(plan=...) both run the custom step the factory adds."""
    gate = ReleaseGate(open_=True)

    def with_gate(cfg: Config) -> list[Step[DeployContext]]:
        plan = default_plan(cfg)
        plan.insert([s.name for s in plan].index("switch"), gate)
        return plan

    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    cfg = load_config(service.config())
    await deploy(cfg, plan=with_gate)
    assert service.serving() == "2.0.0"
    result = await rollback(cfg, "1.0.0", plan=with_gate)
    assert service.serving() == "1.0.0"
    assert "release-gate" in [r.name for r in result.steps]
    assert gate.journal == ["asked for 2.0.0; green is True", "asked for 1.0.0; green is True"]
