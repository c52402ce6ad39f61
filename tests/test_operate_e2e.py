"""Operating commands on the real engine: status, history, plan, rollback, hooks, metrics."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from tests.support import ROOT, Service

pytestmark = pytest.mark.docker


def report(service: Service, verb: str) -> Any:
    run = service.run(verb, "--json", log_format=None, timeout=120)
    assert run.code == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture
def deployed_twice(service: Service) -> Service:
    """Blue 1.0.0 by hand, then deploys of 2.0.0 and 3.0.0 by the tool."""
    service.start_blue("1.0.0")
    for version in ("2.0.0", "3.0.0"):
        service.write_app(version)
        service.config(extra=f'[metrics]\ntextfile = "{service.workdir / "ru.prom"}"\n')
        run = service.deploy()
        assert run.code == 0, run.stderr
    return service


def test_status_and_history_tell_what_serves_and_what_happened(deployed_twice: Service) -> None:
    """status: 3.0.0 healthy, last deploy 2.0.0 -> 3.0.0; history: both deploys, oldest first."""
    service = deployed_twice
    status = report(service, "status")
    assert status["production"]["version"] == "3.0.0" and status["production"]["healthy"]
    assert status["last_deploy"]["from_version"] == "2.0.0"
    assert status["last_deploy"]["result"] == "deployed"
    assert status["lock_holder"] is None and status["unfinished"] is None
    assert status["leftovers"] == [] and status["redirect_to"] is None
    history = report(service, "history")
    assert [(e["from_version"], e["to_version"], e["result"]) for e in history] == [
        ("1.0.0", "2.0.0", "deployed"),
        ("2.0.0", "3.0.0", "deployed"),
    ]
    assert all(e["user"] and e["host"] and e["seconds"] > 0 for e in history)
    human = service.run("status", log_format=None, timeout=120)
    assert "production" in human.stdout and "(version 3.0.0)" in human.stdout
    metrics = (service.workdir / "ru.prom").read_text()
    assert (
        f'rolling_update_runs_total{{kind="deploy",result="deployed",service="{service.name}"}} 2.0'
        in metrics
    )
    assert "rolling_update_last_success_timestamp_seconds" in metrics


def test_plan_shows_the_deploy_and_changes_nothing(deployed_twice: Service) -> None:
    """plan: the steps, the switch, the diff against blue; no container is created."""
    service = deployed_twice
    service.write_app("4.0.0")
    began = time.time()
    plan = report(service, "plan")
    assert plan["version"] == "4.0.0" and plan["switch"] == "handoff"
    assert [s["name"] for s in plan["steps"]][:3] == ["guard", "build", "migrate"]
    assert f"Image: {service.repo}:3.0.0 -> {service.repo}:4.0.0" in plan["diff_against_blue"]
    assert all(item.endswith("=…") for item in plan["production_spec"]["Env"])
    assert service.created_since(began) == []
    assert service.serving() == "3.0.0"
    human = service.run("plan", log_format=None, timeout=120).stdout
    assert "3.0.0 -> 4.0.0" in human and "warning" not in human


def test_the_version_already_serving_is_refused_unless_forced(deployed_twice: Service) -> None:
    """plan warns and deploy exits 2 touching nothing when 3.0.0 already serves; --force deploys."""
    service = deployed_twice
    began = time.time()
    human = service.run("plan", log_format=None, timeout=120).stdout
    assert "warning: version 3.0.0 is what production already runs" in human
    refused = service.deploy()
    assert refused.code == 2 and "--force" in refused.stderr, refused.stderr
    assert service.created_since(began) == []
    forced = service.run("deploy", "--force", timeout=120)
    assert forced.code == 0, forced.stderr
    assert service.serving() == "3.0.0" and service.created_since(began) != []


def test_rollback_goes_back_without_build_or_migrations(deployed_twice: Service) -> None:
    """rollback: 3.0.0 -> 2.0.0 through the safe flow, skipping build and migrate; recorded."""
    service = deployed_twice
    run = service.run("rollback", timeout=120)
    assert run.code == 0, run.stderr
    started = [e["step"] for e in run.event("deploy.step.started")]
    assert "build" not in started and "migrate" not in started and "verify" in started
    assert run.event("rollback.plan")[0]["to"] == "2.0.0"
    assert service.serving() == "2.0.0"
    assert report(service, "history")[-1]["kind"] == "rollback"
    unknown = service.run("rollback", "9.9.9", log_format=None, timeout=120)
    assert unknown.code == 2
    assert "no image for version '9.9.9'; known versions:" in unknown.stderr
    assert "3.0.0" in unknown.stderr and "2.0.0" in unknown.stderr


def test_a_failing_pre_hook_stops_before_anything_and_post_hooks_get_the_facts(
    service: Service,
) -> None:
    """pre_deploy exiting 1: exit 2, nothing built; post_deploy sees RU_* of the deploy."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    facts = service.workdir / "facts"
    service.config(extra='[hooks]\npre_deploy = "exit 1"\n')
    refused = service.deploy()
    assert refused.code == 2 and "the pre_deploy hook exited with code 1" in refused.stderr
    assert refused.event("deploy.step.started") == []
    service.config(
        extra=f'[hooks]\npre_deploy = "true"\npost_deploy = "env | grep ^RU_ | sort > {facts}"\n'
    )
    run = service.deploy()
    assert run.code == 0, run.stderr
    env = dict(line.split("=", 1) for line in facts.read_text().splitlines())
    assert env["RU_VERSION"] == "2.0.0" and env["RU_FROM_VERSION"] == "1.0.0"
    assert env["RU_RESULT"] == "deployed" and env["RU_SERVICE"] == service.name


def test_the_drop_in_script_deploys_like_the_bash_script_it_replaces(service: Service) -> None:
    """examples/rolling-update.sh as scripts/rolling-update.sh: a deploy, ENV_REGION passed on."""
    import os
    import shutil
    import sys

    # An hk host: its Brain's database says hk (the self-check compares it with ENV_REGION).
    service.write_env_file({"DB_REGION": "hk"})
    service.start_blue("1.0.0", {"ENV_REGION": "hk"})
    service.write_app("2.0.0", knobs={"ECHO_ENV": "ENV_REGION"})
    service.config()
    (service.workdir / "scripts").mkdir()
    script = service.workdir / "scripts" / "rolling-update.sh"
    shutil.copy(ROOT / "examples" / "rolling-update.sh", script)
    env = {
        **os.environ,
        "ROLLING_UPDATE_VENV": sys.prefix,
        "ENV_REGION": "hk",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [str(script), "--log-format", "json"], capture_output=True, text=True, env=env, timeout=180
    )
    assert result.returncode == 0, result.stderr
    assert service.serving() == "2.0.0"
    assert '"line": "ENV_REGION=hk"' in result.stdout


def test_the_timeline_is_the_deploys_own_log_drawn(service: Service) -> None:
    """The timeline's phases are the logged steps, to the millisecond; history --show draws it."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config()
    run = service.deploy()
    assert run.code == 0, run.stderr
    timeline = run.event("deploy.timeline")[0]["timeline"]
    phases = timeline["phases"]
    assert [p["name"] for p in phases] == [e["step"] for e in run.event("deploy.step.started")]
    done = {e["step"]: e["seconds"] for e in run.event("deploy.step.done")}
    assert {p["name"]: p["seconds"] for p in phases} == done
    assert all(p["result"] == "done" for p in phases)
    assert [p["start_s"] for p in phases] == sorted(p["start_s"] for p in phases)
    marks = [m["what"] for m in timeline["marks"]]
    assert "traffic moved to green (the handoff)" in marks and "blue stopped" in marks
    measured = run.event("deploy.done")[0]["measured"]
    assert timeline["two_versions_s"] == measured["two_containers_s"]
    assert timeline["failed_requests"] == measured["handoff_failed_requests"] == 0
    deploy_id = run.event("deploy.started")[0]["deploy_id"]
    shown = service.run("history", "--show", deploy_id[:8], log_format=None, timeout=120)
    assert shown.code == 0, shown.stderr
    assert "timeline," in shown.stdout and all(p["name"] in shown.stdout for p in phases)
    service.write_app("3.0.0")
    console = service.run("deploy", log_format=None, timeout=120)
    assert console.code == 0, console.stderr
    drawn = console.stdout + console.stderr
    assert "timeline," in drawn and "▲" in drawn and "two versions ran side by side" in drawn
