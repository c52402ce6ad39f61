"""Exit codes follow what the host is left in: the CLI's one mapping, and interrupts."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from rolling_update import (
    ConfigError,
    ConflictError,
    EngineUnavailable,
    FailedAfterCommit,
    GreenFailed,
    PreflightError,
    RollbackIncomplete,
)
from rolling_update._cli.exits import outcome
from rolling_update._cli.main import left_to_do
from rolling_update._cli.signals import Interrupt, interruptible
from rolling_update._config.settings import load_config
from rolling_update._deploy.outcome import HostOutcome, Outcome
from rolling_update._deploy.saga import SagaState
from tests.support import replicated_config, run_cli


def began(step: str = "switch", *, committed: bool = False) -> SagaState:
    state = SagaState()
    state.begin(step)
    if committed:
        state.commit()
    return state


def test_nothing_was_changed_is_only_said_before_the_first_step() -> None:
    """A preflight-class error exits 2 "nothing was changed" only while no step has begun."""
    code, line = outcome(PreflightError("port 1 is taken"), SagaState())
    assert code == 2 and line is not None and "nothing was changed" in line
    code, line = outcome(PreflightError("port 1 is taken"), began("start-green"))
    assert code == 1 and line is not None and "rolled back" in line
    assert "nothing was changed" not in line


def test_engine_failure_mid_deploy_is_not_engine_unreachable_nothing_changed() -> None:
    """EngineUnavailable before any step: exit 2; after a step began: exit 1, rolled back."""
    assert outcome(EngineUnavailable("Docker engine unreachable: x"))[0] == 2
    code, line = outcome(EngineUnavailable("Docker engine unreachable: x"), began())
    assert code == 1 and line is not None
    assert "the Docker engine failed during the deploy" in line and "nothing" not in line


def test_a_rollback_the_engine_left_unanswered_says_what_to_do() -> None:
    """Exit 3 when undos found the engine unanswering: one line, `recover` once it answers."""
    state = began("verify")
    state.failures = [("switch", "the Docker engine did not answer docker rm x within 2s")]
    state.engine_unanswered = True
    cause = EngineUnavailable("the Docker engine did not answer docker inspect y within 2s")
    code, line = outcome(RollbackIncomplete(cause, state.failures), state)
    assert code == 3 and line is not None and "\n" not in line
    assert "once the engine answers again, run `rolling-update recover`" in line
    assert "docker ps -a" not in line


def test_after_the_pivot_a_failure_never_claims_a_rollback() -> None:
    """FailedAfterCommit exits 4 and says the new version serves, never "rolled back"."""
    exc = FailedAfterCommit(RuntimeError("notify failed"), "notify")
    code, line = outcome(exc, began("notify", committed=True))
    assert code == 4 and line is not None
    assert "the new version serves" in line and "rolled back" not in line


def test_other_outcomes_map_to_their_codes() -> None:
    """Incomplete rollback 3, conflicts 1, config errors 2, interrupts 128+n (0 once committed)."""
    incomplete = RollbackIncomplete(GreenFailed("x", container="g"), [("switch", "boom")])
    assert outcome(incomplete, began())[0] == 3
    assert outcome(ConflictError("port taken after the preflight"), began())[0] == 1
    assert outcome(ConfigError("bad", key="service.port"))[0] == 2
    assert outcome(None, began(), signal.SIGTERM)[0] == 143
    assert outcome(None, began(committed=True), signal.SIGINT) == (0, None)
    code, line = outcome(None, SagaState(), signal.SIGINT)
    assert code == 130 and line == "interrupted by SIGINT: nothing was changed"


@pytest.fixture
def signal_mask() -> Iterator[None]:
    """interruptible blocks SIGINT/SIGTERM once settled; children must not inherit that."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, before)


@pytest.mark.usefixtures("signal_mask")
def test_a_sigint_racing_a_watch_failure_exits_130() -> None:
    """Regression: SIGINT, then the work fails on its own before it sees the cancel: still 130."""
    interrupt = Interrupt()
    state = began("green-health")

    async def work() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        # The failure wins the race: raised from a shielded section the cancel cannot enter.
        with anyio.CancelScope(shield=True):
            await anyio.sleep(0.3)
            raise GreenFailed("green exited with code 3", container="g")

    with pytest.raises(GreenFailed) as caught:
        anyio.run(interruptible, work, interrupt)
    assert interrupt.signum == signal.SIGINT
    code, line = outcome(caught.value, state, interrupt.signum)
    assert code == 130 and line is not None and "interrupted by SIGINT during green-health" in line


def test_every_command_shows_an_example_and_deploy_the_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--help of each command has an example; deploy's lists every exit code; --version works."""
    from rolling_update._cli.main import main

    for command in ("deploy", "recover", "rollback", "status", "history", "plan"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "example" in text and f"python -m rolling_update {command}" in text
        if command == "deploy":
            assert all(f"\n  {code} " in text for code in (0, 1, 2, 3, 4, 130, 143))
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("rolling-update ")


@pytest.mark.parametrize(
    ("options", "line"),
    [
        (["--replica", "x"], "error: --replica: no replica named 'x'; the replicas are: none"),
        (["--host", "eu"], "error: --host: no host named 'eu'; the hosts are: local"),
    ],
)
def test_a_unit_a_one_container_config_lacks_is_refused_not_ignored(
    options: list[str], line: str
) -> None:
    """rollback --replica (or --host) of a unit a one-container config lacks: exit 2 naming the
    option, never a rollback of the one container."""
    example = Path(__file__).parent.parent / "config.example.toml"
    done = run_cli("rollback", "1.0.0", *options, "--config", str(example))
    assert done.returncode == 2
    assert done.stderr.startswith(line), done.stderr


def test_each_unit_of_hosts_with_replicas_is_headed_by_its_label(tmp_path: Path) -> None:
    """history of hosts with replicas heads each unit's section "host H, replica NAME"."""
    hosts = '[[hosts]]\nname = "us"\n[[hosts]]\nname = "hk"\nengine = "ssh://hk.example.com"'
    done = run_cli("history", "--config", str(replicated_config(tmp_path, "", hosts)))
    assert done.returncode == 0, done.stderr
    headings = [line for line in done.stdout.splitlines() if line.startswith("== ")]
    assert headings == [
        "== host us, replica app-1",
        "== host us, replica app-2",
        "== host hk, replica app-1",
        "== host hk, replica app-2",
    ]


def test_a_rollouts_closing_words_say_what_to_run_for_each_unit_left_part_way(
    tmp_path: Path,
) -> None:
    """The rollout's last line names, in the config's order, what to run for each unit it
    left part-way: `recover` for an unfinished rollback, a commit or a dead production,
    and `recover` then `rollback` to the version it had for a revert of rollback-all."""
    path = tmp_path / "ru.toml"
    path.write_text(
        '[image]\nname = "app:{version}"\nversion_file = "package.json"\n'
        '[state]\ndir = "state"\n'
        '[service]\nname = "app"\ngreen_name = "app-green"\nport = 5221\ngreen_port = 5222\n'
        '[[hosts]]\nname = "us"\n[[hosts]]\nname = "hk"\nengine = "ssh://hk.example.com"\n'
        '[[hosts]]\nname = "eu"\nengine = "ssh://eu.example.com"\n'
    )
    cfg = load_config(path, environ={})
    report = [
        HostOutcome("eu", Outcome.ROLLBACK_INCOMPLETE, "1.0.0", "2.0.0"),
        HostOutcome("us", Outcome.REVERT_FAILED, "1.0.0", "2.0.0"),
        HostOutcome("hk", Outcome.ROLLED_BACK, "1.0.0", "2.0.0"),
    ]
    assert left_to_do(cfg, report) == (
        "; us: its revert to 1.0.0 did not finish (its line says why); run "
        "`rolling-update recover --host us`, then, unless it serves 1.0.0 by then, "
        "`rolling-update rollback 1.0.0 --host us`"
        "; eu: its rollback did not finish (its line says why); once that is mended, run "
        "`rolling-update recover --host eu`"
    )
    assert left_to_do(cfg, report[2:]) == ""
