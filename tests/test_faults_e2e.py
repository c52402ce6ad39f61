"""Fault injection on the real engine: signals at every step, locks, hostile input, secrets.

Each case asserts afterwards what serves the production port, which containers
exist, and the exit code; after SIGKILL, that `recover` restores one serving
production container with nothing left behind. The README's fault table is
this file's outcome.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.support import Barrier, Prober, Service

pytestmark = pytest.mark.docker

STEPS = [
    "build",
    "migrate",
    "start-green",
    "green-health",
    "tick-boundary",
    "handoff",
    "switch",
    "verify",
    "release",
    "soak",
    "cleanup",
]
SECRET = "pa55w0rd-4c1d-9e8f"


TICK = "settle = 1\nguard = 1\ninterval = 0.1\ntimeout = 30\n"


def prepared(service: Service) -> None:
    """Blue v1 serving; v2 to deploy; a 1 s settle gives the tick step some length."""
    service.write_env_file({"DB_PASSWORD": SECRET})
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config(tick=TICK)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("step", STEPS)
def test_interrupt_at_each_step_leaves_one_serving_version(
    service: Service, step: str, signum: int
) -> None:
    """SIGINT/SIGTERM at a step's start rolls back (128+n, v1); in cleanup it keeps v2 (0)."""
    prepared(service)
    run = service.deploy_interrupted(step, signum)
    committed = step == "cleanup"
    assert run.code == (0 if committed else 128 + signum), run.stderr
    expected = "2.0.0" if committed else "1.0.0"
    assert service.serving() == expected
    assert service.containers() == [service.name]
    assert not service.journal.exists() and not service.redirected()
    if run.code != 0:
        assert f"interrupted by {signal.Signals(signum).name}" in run.stderr
    assert SECRET not in run.stdout + run.stderr


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_step_is_recovered(service: Service, step: str) -> None:
    """After SIGKILL at any step, `recover` leaves exactly one healthy production container,
    and a client on 127.0.0.1 (IPv4, a new connection each request) sees no failed request
    through the kill and the recovery: recover hands the port over as a deploy does."""
    # The kill is sent once the log says the step started. Green drains for 60 s before the
    # cleanup stops it, so the deploy still runs when the kill lands, in the cleanup too; a
    # 3 s soak keeps a kill sent before the cleanup ahead of the point of no return.
    prepared(service)
    service.config(tick=TICK, verify="timeout = 10\nsoak = 3\n", switch="drain = 60\n")
    with Prober(service.version_url()) as prober:
        killed = service.deploy_interrupted(step, signal.SIGKILL)
        assert killed.code == -signal.SIGKILL
        # What the host is left in says what recover must bring back: the journal and the
        # mark of the unfinished deploy, committed (the new version stays) only from the
        # cleanup on.
        left = service.journal_left()
        assert left is not None and service.marked()
        assert left.committed == (step == "cleanup")
        recovered = service.recover()
    assert prober.failures == 0, prober.errors
    assert len(prober.samples) > 20
    assert recovered.code == 0, recovered.stderr
    assert "consistent:" in recovered.stderr
    assert service.serving() == ("2.0.0" if left.committed else "1.0.0")
    assert service.containers() == [service.name]
    assert not service.journal.exists() and not service.redirected() and not service.marked()
    assert service.recover().code == 0  # idempotent
    assert service.containers() == [service.name]


def test_deploy_refuses_on_top_of_an_unfinished_deploy(service: Service) -> None:
    """After a SIGKILL, deploy exits 2 naming the unfinished deploy until `recover` ran."""
    prepared(service)
    assert service.deploy_interrupted("switch", signal.SIGKILL).code == -signal.SIGKILL
    refused = service.deploy()
    assert refused.code == 2
    assert "an unfinished deploy" in refused.stderr and "run `rolling-update recover` first" in (
        refused.stderr
    )
    assert service.recover().code == 0
    again = service.deploy()
    assert again.code == 0, again.stderr
    assert service.serving() == "2.0.0"
    assert service.containers() == [service.name]


def test_repeated_interrupts_do_not_abandon_the_rollback(service: Service) -> None:
    """Six SIGINTs from the switch on: the rollback runs to its end, blue serves, exit 130."""
    prepared(service)
    service.config(verify="timeout = 3\n", tick="settle = 0\nguard = 1\ninterval = 0.1\n")
    service.write_app("2.0.0", knobs={"FAIL_ON_PORT": service.port})
    run = service.deploy_interrupted("verify", signal.SIGINT, repeat=5)
    assert run.code == 130, run.stderr
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]
    assert any(e.get("action", "").startswith("ignored") for e in run.event("deploy.interrupted"))


def test_second_deploy_is_locked_out_and_says_by_whom(service: Service, barrier: Barrier) -> None:
    """A deploy while another runs exits 2 naming the holder's deploy id, pid and start time."""
    prepared(service)
    service.config(tick=TICK, migrate=barrier.migration())
    with service.cli("deploy") as first:
        # The first deploy waits at the barrier in its migrate step, holding the lock.
        held = first.until_event("container.log", line=Barrier.LINE)
        second = service.deploy()
        barrier.release()
        rest = first.finish()
    assert second.code == 2
    holder = f"{service.name} is locked by deploy {held['deploy_id']} (pid {first.pid} on "
    assert holder in second.stderr and ") since 20" in second.stderr
    assert rest.code == 0, rest.stderr
    assert service.serving() == "2.0.0"


def test_lock_of_a_killed_deploy_is_taken_over(service: Service) -> None:
    """A lock file left by a SIGKILLed holder does not block: the next run takes it over."""
    prepared(service)
    assert service.deploy_interrupted("build", signal.SIGKILL).code == -signal.SIGKILL
    run = service.recover()
    assert run.code == 0, run.stderr
    assert '"lock.taken_over"' in run.stdout


def test_engine_unreachable_exits_2(service: Service) -> None:
    """No Docker engine at DOCKER_HOST: one line naming the engine, exit 2, nothing changed."""
    prepared(service)
    run = service.deploy(environ={"DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert run.code == 2
    assert "Docker engine unreachable at unix:///nonexistent/docker.sock: " in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert service.serving() == "1.0.0"


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("env_file", ".env.docker: cannot read env file: No such file or directory"),
        ("version_file", "package.json: cannot read version file: No such file or directory"),
        ("dockerfile", "build.dockerfile: no Dockerfile in the build context"),
        ("image", "does not exist and build is disabled"),
        ("toml", "invalid TOML"),
        ("type", "service.port: Input should be a valid integer"),
    ],
)
def test_bad_input_exits_2_naming_the_culprit(
    service: Service, breakage: str, message: str
) -> None:
    """Each kind of bad input gets one line naming file or key, exit 2; no container is created."""
    prepared(service)
    path = service.config()
    text = path.read_text()
    if breakage == "env_file":
        (service.workdir / ".env.docker").unlink()
    elif breakage == "version_file":
        (service.workdir / "brain" / "package.json").unlink()
    elif breakage == "dockerfile":
        (service.workdir / "brain" / "Dockerfile").unlink()
    elif breakage == "image":
        path.write_text(text.replace("[build]\n", "[build]\nenabled = false\n"))
        path.write_text(path.read_text().replace('context = "brain"\n', ""))
    elif breakage == "toml":
        path.write_text(text + "\n[broken\n")
    elif breakage == "type":
        path.write_text(text.replace(f"port = {service.port}\n", 'port = "high"\n'))
    began = time.time()
    run = service.deploy()
    assert run.code == 2, run.stderr
    assert message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    assert service.created_since(began) == []
    assert service.serving() == "1.0.0"


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("html", "HTTP 200 body is not JSON"),
        ("huge", "body larger than 65536 bytes"),
        ("hang", "no answer within 0.5s"),
    ],
)
def test_hostile_health_endpoint_is_rolled_back_with_the_reason(
    service: Service, mode: str, reason: str
) -> None:
    """A green whose health answers HTML, 2 MB or nothing fails with that reason; blue serves."""
    prepared(service)
    service.write_app("2.0.0", knobs={"HEALTH_MODE": mode})
    service.config(
        health='path = "/api/brain/health"\ninterval = 0.2\nattempts = 10\nrequest_timeout = 0.5\n'
    )
    run = service.deploy()
    assert run.code == 1
    assert "green not healthy within 2s" in run.stderr and reason in run.stderr
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]


def test_unusable_tick_status_is_rolled_back_with_the_reason(service: Service) -> None:
    """Blue's tick endpoint answering HTML stops the deploy before the switch; blue serves."""
    service.start_blue("1.0.0", knobs={"TICK_MODE": "html"})
    service.write_app("2.0.0")
    service.config()
    run = service.deploy()
    assert run.code == 1
    assert "tick status" in run.stderr and "is unusable: HTTP 200 body is not JSON" in run.stderr
    assert service.serving() == "1.0.0"
    assert service.containers() == [service.name]


def test_secrets_never_reach_console_output_or_errors(service: Service) -> None:
    """An env-file secret printed by a failing migration is blanked on the console and in errors."""
    service.write_env_file({"DB_PASSWORD": SECRET})
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"MIGRATE_FAIL": 1, "ECHO_ENV": "DB_PASSWORD"})
    path = service.config(env={"API_KEY": "k3y-from-config-77"})
    result = service.run("deploy", log_format="console", timeout=120)
    assert path.exists() and result.code == 1
    output = result.stdout + result.stderr
    assert "DB_PASSWORD=***" in output  # the line is there, the value is not
    assert SECRET not in output and "k3y-from-config-77" not in output


@pytest.mark.anyio
async def test_failure_objects_carry_no_secrets(service: Service) -> None:
    """The MigrationFailed a Python caller catches quotes the container's lines blanked too."""
    from rolling_update import MigrationFailed, deploy, load_config

    service.write_env_file({"DB_PASSWORD": SECRET})
    service.start_blue("1.0.0")
    service.write_app("2.0.0", knobs={"MIGRATE_FAIL": 1, "ECHO_ENV": "DB_PASSWORD"})
    cfg = load_config(service.config())
    with pytest.raises(MigrationFailed) as caught:
        await deploy(cfg)
    assert "DB_PASSWORD=***" in caught.value.last_logs
    assert SECRET not in str(caught.value.last_logs)
