"""The real Cecelia Brain (../shared/realbrain), deployed with config.example.toml.

Only names, ports and paths differ from the shipped example (see
``RealBrain.reference_config``); its timings, actions, health, migration and
blue check are the example's own. Every assertion is on what the host is left
in: containers, ports, answers and the shared database.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realbrain import (
    ENV_FILE,
    NEW,
    OLD,
    REPO,
    TEST_TABLE,
    Poller,
    RealBrain,
    call,
    context,
    db_schema,
    db_tick_enabled,
    image_id,
    psql,
    require_realbrain,
    reset_db,
    shape,
)
from tests.support import (
    APP_DIR,
    BASE_IMAGE,
    DOCKER,
    Prober,
    docker,
    free_port,
    require_engine,
    until,
)

pytestmark = [pytest.mark.docker, pytest.mark.realbrain]

TICK = "/api/brain/tick/status"


@pytest.fixture
def brain(tmp_path: Path) -> Iterator[RealBrain]:
    require_engine()
    require_realbrain()
    service = RealBrain(tmp_path)
    # Each case starts with no `latest` tag, which the deploy's tag step sets and its undo
    # takes away again: a tag an earlier case's cleanup could not remove would be "moved
    # back" to, and read as the undo's failure.
    docker("rmi", f"{REPO}:latest", check=False)
    assert image_id(f"{REPO}:latest") is None
    try:
        yield service
    finally:
        # Containers first: a crash-looping release would run its migrations again.
        service.cleanup()
        reset_db()


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container["Config"]["Env"])


def report(what: str, **figures: object) -> None:
    """Figures for the benchmark notes (shown with ``pytest -s``)."""
    print(f"\nMEASURED {what}: {json.dumps(figures)}")


def assert_blue_back(brain: RealBrain, found: str) -> None:
    """Blue serves 1.98.0 again, as healthy as found, ticking, not drained, DB enabled."""
    assert brain.serving() == OLD
    assert brain.containers() == [brain.name]
    assert brain.inspect(brain.name)["Config"]["Image"] == f"{REPO}:{OLD}"
    assert brain.health().get("status") == found
    tick = brain.tick()
    assert tick.get("loop_running") is True, tick
    assert tick.get("draining") is False, tick
    assert db_tick_enabled() is True
    assert image_id(f"{REPO}:latest") is None, "the latest tag was not moved back"


def test_upgrade_serves_the_new_version_without_a_failed_request(brain: RealBrain) -> None:
    """1.98.0 → 1.98.1: served, ticking, green drained beside blue, no request failed."""
    brain.start_blue(OLD)
    brain.reference_config(context(NEW))
    green = Poller(brain.url(brain.green_port, TICK))
    with Prober(brain.version_url()) as prober, green:
        run = brain.deploy(timeout=300)
    assert run.code == 0, run.stderr

    assert brain.serving() == NEW
    assert brain.health().get("status") == "healthy"
    assert brain.tick().get("loop_running") is True
    assert db_tick_enabled() is True
    assert brain.containers() == [brain.name]
    assert brain.inspect(brain.name)["Config"]["Image"] == f"{REPO}:{NEW}"
    assert brain.tick(brain.green_port) == {}, "green still answers"

    ran = [body for body in green.bodies if body.get("loop_running") is True]
    assert ran, "green's tick loop was never seen running"
    # The Brain starts its loop with setInterval (src/tick.js, startTickLoop): the first tick
    # fires loop_interval_ms after the loop starts, and the loop starts as the server listens.
    # The tool drains green at its first answer (green-answers), so one poll can land in
    # between. What must hold: green is drained well before a tick can fire, no tick ran on
    # it undrained, and once drained it never runs undrained again.
    answers = [(at, body) for at, body in green.answers if body is not None]
    drained_at = next(i for i, (_, body) in enumerate(answers) if body.get("draining") is True)
    early = [body for _, body in answers[:drained_at]]
    assert answers[drained_at][0] - answers[0][0] < ran[0]["loop_interval_ms"] / 1000 / 2
    assert not [body for body in early if body.get("tick_running")], "a tick ran undrained"
    undrained = [
        body
        for _, body in answers[drained_at:]
        if body.get("loop_running") is True and body.get("draining") is not True
    ]
    assert not undrained, f"{len(undrained)} of {len(ran)} answers of green's running loop"
    assert prober.failures == 0, prober.errors[:5]
    assert prober.versions == [OLD, NEW]

    (done,) = run.event("deploy.done")
    report(
        "upgrade",
        wall_s=round(run.seconds, 2),
        measured=done["measured"],
        requests=len(prober.samples),
        failed=prober.failures,
        longest_gap_s=round(prober.longest_gap(), 3),
        green_answers_loop_running=len(ran),
        green_answers_before_its_drain=len(early),
    )


def test_an_interrupt_after_blue_was_drained_gives_blue_back(brain: RealBrain) -> None:
    """SIGINT once blue is drained: exit 130, blue serves 1.98.0 ticking and undrained."""
    brain.start_blue(OLD)
    found = brain.settled_health()
    brain.reference_config(context(NEW))
    with Prober(brain.version_url()) as prober:
        run = brain.deploy_interrupted(None, signal.SIGINT, after="before-switch", timeout=240)
    assert run.code == 130, run.stderr
    # Blue's own log: drained (POST .../drain), then the drain cancelled.
    said = [line for line in brain.logs().splitlines() if "[tick] Drain mode" in line]
    assert [line.split(" at ")[0].split(",")[0] for line in said] == [
        "[tick] Drain mode activated",
        "[tick] Drain mode cancelled",
    ], said
    assert_blue_back(brain, found)
    assert prober.failures == 0, prober.errors[:5]
    assert prober.versions == [OLD]
    steps = run.event("deploy.started")[0]["steps"]
    step = steps[steps.index("before-switch") + 1]
    report("interrupt", step=step, wall_s=round(run.seconds, 2), failed=prober.failures)


def test_a_release_failing_after_the_switch_is_rolled_back(brain: RealBrain) -> None:
    """A release dying on production's port after the switch: exit 1, blue back as found."""
    brain.start_blue(OLD)
    found = brain.settled_health()
    release = brain.derived("1.98.3", fail_on_port=brain.port)
    brain.reference_config(release)
    with Prober(brain.version_url()) as prober:
        run = brain.deploy(timeout=300)
    assert run.code == 1, run.stderr
    assert prober.versions == [OLD, "1.98.3", OLD], "the release never served (or blue did not)"
    assert_blue_back(brain, found)
    # Requests to the release while it dies are its own; none fails on the way to it, or
    # once blue answers again.
    versions = [version for _, version in prober.samples]
    served = versions.index("1.98.3")
    back = versions.index(OLD, served)
    assert None not in versions[:served] and None not in versions[back:], prober.errors[:5]
    outage = prober.samples[back][0] - prober.samples[served][0]
    runs: list[list[Any]] = []  # [version, first answer's time, count], in order
    for t, version in prober.samples:
        if runs and runs[-1][0] == version:
            runs[-1][2] += 1
        else:
            runs.append([version, round(t - prober.samples[0][0], 3), 1])
    report(
        "failed-after-switch",
        wall_s=round(run.seconds, 2),
        failed=prober.failures,
        release_served_to_blue_back_s=round(outage, 3),
        answers=runs,
    )


def test_a_migration_blue_cannot_boot_on_is_not_called_a_rollback(brain: RealBrain) -> None:
    """Schema 077 and a release dying after the switch: exit 3, nothing claims 1.98.0 serves."""
    brain.start_blue(OLD)
    release = brain.derived(
        "1.98.2",
        fail_on_port=brain.port,
        migration=f"CREATE TABLE {TEST_TABLE} (id serial PRIMARY KEY, note text);\n",
    )
    brain.reference_config(release)
    plan = brain.deploy(verb="plan")
    assert plan.code == 0, plan.stderr
    assert "node src/selfcheck.js" in plan.stdout and "exit 3" in plan.stdout, plan.stdout

    with Prober(brain.version_url()) as prober:
        run = brain.deploy(timeout=300)
    assert run.code == 3, run.stderr
    assert db_schema() == "077"
    assert psql(f"SELECT to_regclass('{TEST_TABLE}')") == TEST_TABLE
    # The truth the check found: blue's build does not boot on this schema.
    check = subprocess.run(
        [
            *(DOCKER, "run", "--rm", "--network", "host", "--env-file", str(ENV_FILE)),
            *(f"{REPO}:{OLD}", "node", "src/selfcheck.js"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 1, check.stdout

    # What the host is left in, watched for a few seconds.
    seen: set[str | None] = set()
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        seen.add(brain.serving())
        time.sleep(0.1)
    containers = {name: brain.inspect(name) for name in brain.containers()}
    images = {name: c["Config"]["Image"] for name, c in containers.items()}
    running = sorted(name for name, c in containers.items() if c["State"]["Running"])
    state = {
        "serving": sorted(map(str, seen)),
        "images": images,
        "running": running,
        "stderr": run.stderr,
    }
    # Blue's container is kept, stopped (it would only crash on this schema); production's
    # port answers the release, never 1.98.0; and the tool says so, not "rolled back".
    assert OLD not in seen and seen == {"1.98.2"}, state
    assert sorted(n for n, image in images.items() if image == f"{REPO}:{OLD}") == [
        n for n in containers if n not in running
    ], state
    assert images[brain.name] == f"{REPO}:1.98.2", state
    assert "previous version serves" not in run.stderr, state
    assert "blue_check" in run.stderr and "not restarted" in run.stderr, state
    report("blue-cannot-boot", wall_s=round(run.seconds, 2), failed=prober.failures, **state)


def test_a_compose_blue_keeps_compose_values_and_compose_keeps_it(brain: RealBrain) -> None:
    """Compose's blue: production keeps its environment: values; compose up leaves it be."""
    env = {"DB_HOST": "127.0.0.1", "DB_PORT": "5433", "OPENAI_API_KEY": "sk-dummy-offline"}
    docker("tag", f"{REPO}:{OLD}", f"{REPO}:latest")
    brain.compose_file()
    up = brain.compose("up", "-d", "node-brain", env=env)
    assert up.returncode == 0, up.stderr
    brain.wait_serving(OLD)
    # Compose's rule: environment: wins over env_file (which says TZ=UTC, /bin/false).
    compose_values = {"TZ": "Asia/Shanghai", "CECELIA_RUN_PATH": "/home/xx/bin/cecelia-run"}
    blue_env = env_of(brain.inspect(brain.name))
    assert {k: blue_env[k] for k in compose_values} == compose_values

    brain.reference_config(context(NEW))
    with Prober(brain.version_url()) as prober:
        run = brain.deploy(environ=env, timeout=300)  # the shell compose runs in
    assert run.code == 0, run.stderr
    assert brain.serving() == NEW
    production = brain.inspect(brain.name)
    assert {k: env_of(production)[k] for k in compose_values} == compose_values

    ps = brain.compose("ps", env=env)
    assert ps.returncode == 0, ps.stderr
    listed = [line for line in ps.stdout.splitlines() if line.startswith(brain.name + " ")]
    assert len(listed) == 1 and " Up" in listed[0], ps.stdout

    expected = brain.compose("config", "--hash", "node-brain", env=env).stdout.split()
    labels = {
        key: value
        for key, value in production["Config"]["Labels"].items()
        if key.startswith("com.docker.compose.")
    }
    again = brain.compose("up", "-d", env=env)
    assert again.returncode == 0, again.stderr
    after = brain.inspect(brain.name)
    said = [e for e in run.events if str(e.get("event", "")).startswith("compose.")]
    why = f"{again.stderr}compose's hash {expected}; production's labels {labels}; {said}"
    assert after["Id"] == production["Id"], why
    assert after["State"]["StartedAt"] == production["State"]["StartedAt"], why
    assert after["RestartCount"] == production["RestartCount"]
    brain.wait_serving(NEW, timeout=5)
    report("compose", wall_s=round(run.seconds, 2), failed=prober.failures, up=again.stderr)


# Fields whose JSON type follows the host's load, not the Brain's state: executor.js's
# checkServerResources answers reason null while ok and "Server overloaded: ..." once CPU,
# memory or swap pressure reaches its bar (a busy CI machine), for the real Brain alone.
LOAD_DEPENDENT = [("resources", "reason")]


def test_the_stand_in_answers_in_the_real_brains_shapes(brain: RealBrain) -> None:
    """tests/app and the real Brain: same keys and JSON types on every endpoint the tool uses."""
    app = brain.workdir / "standin"
    shutil.copytree(APP_DIR, app)
    (app / "package.json").write_text(json.dumps({"name": "brain", "version": "1.0.0"}))
    image = f"{brain.name}-standin:1.0.0"
    brain.made_images.append(image)
    docker("build", "-q", "--build-arg", f"BASE={BASE_IMAGE}", "-t", image, str(app), timeout=300)
    data = brain.workdir / "standin-db"
    data.mkdir()
    port = free_port()
    docker(
        *("run", "-d", "--name", f"{brain.name}-standin", "--network", "host"),
        *("-e", f"PORT={port}", "-e", "BRAIN_DB=/data/brain.db", "-v", f"{data}:/data", image),
    )
    until(lambda: brain.serving(port), "the stand-in serving", timeout=20)
    # Both as new: no tick yet in the shared database either (the real Brain's first tick
    # is loop_interval_ms, 5 s, after it starts; the calls below take well under that).
    psql("DELETE FROM working_memory WHERE key IN ('tick_last', 'tick_last_dispatch')")
    brain.start_blue(OLD)
    # The real Brain's drain completes only with nothing in progress in the whole database.
    assert psql("SELECT COUNT(*) FROM tasks WHERE status = 'in_progress'") == "0"

    calls = [
        ("GET", "/api/brain/health", ""),
        ("GET", TICK, ""),
        ("GET", "/api/brain/hardening/status", ""),
        ("GET", "/api/brain/tick/drain-status", " (not draining)"),
        ("POST", "/api/brain/tick/drain", ""),
        ("GET", "/api/brain/tick/drain-status", " (draining, nothing in progress: completes)"),
        ("POST", "/api/brain/tick/drain-cancel", ""),
        ("POST", "/api/brain/tick/enable", ""),
        ("POST", "/api/brain/tick/disable", ""),
    ]
    differences: list[str] = []
    compared: dict[str, int] = {}
    for method, path, when in calls:
        real_status, real = call(brain.port, method, path)
        stand_status, stand = call(port, method, path)
        what = f"{method} {path}{when}"
        if (real_status, stand_status) != (200, 200) or real is None or stand is None:
            differences.append(f"{what}: status {real_status} (real) vs {stand_status}")
            continue
        real_shape, stand_shape = shape(real, stand), shape(stand, stand)
        for outer, inner in LOAD_DEPENDENT:
            for answer in (real_shape, stand_shape):
                if isinstance(answer.get(outer), dict) and inner in answer[outer]:
                    answer[outer][inner] = "string|null"
        if path.endswith("/hardening/status"):
            stand_shape.pop("port", None)
        compared[what] = sum(len(v) if isinstance(v, dict) else 1 for v in real_shape.values())
        for key in sorted(real_shape.keys() | stand_shape.keys()):
            r, s = real_shape.get(key, "missing"), stand_shape.get(key, "missing")
            if r != s:
                differences.append(f"{what} {key}: {r} (real) vs {s} (stand-in)")
        if when.startswith(" (draining"):
            assert real.get("drain_completed") is True, real
            assert db_tick_enabled() is False, "the completing drain-status left the tick enabled"
    assert not differences, "\n".join(differences)
    report("shapes", keys_compared=compared)
