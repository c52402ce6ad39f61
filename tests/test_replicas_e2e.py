"""Several replicas of one service on this engine, rolled one at a time (issue 20)."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from rolling_update._config.settings import ReplicaConfig
from rolling_update._handoff.nft import table_name
from tests.support import (
    BASE_IMAGE,
    ROOT,
    Collector,
    Prober,
    Run,
    Sampler,
    Service,
    collector,
    docker,
    free_port,
    get_json,
)

__all__ = ["collector"]

pytestmark = pytest.mark.docker

# A tick every 3 s (checked twice a second): many fall inside a roll, and each leaves
# a window for the switch (tick.guard is 1 s).
TICKS = {"LOOP_INTERVAL": "0.5", "TICK_INTERVAL": "3", "TICK_DURATION": "0.2"}


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_block(step: int, count: int) -> int:
    """A production port whose replicas' ports (and greens', one up) are all free."""
    for _ in range(50):
        base = free_port()
        wanted = [base + i * step + d for i in range(count) for d in (0, 1)]
        if max(wanted) < 65_000 and all(_bindable(p) for p in wanted):
            return base
    raise RuntimeError("no free block of ports")


class Replicas:
    """Three replicas of ``service`` as the operator runs them: replica 1 ticks, 2 and 3
    run drained; names and ports as the tool derives them."""

    def __init__(self, service: Service, report_url: str) -> None:
        self.service = service
        self.report_url = report_url
        service.port = _port_block(10, 3)
        service.green_port = service.port + 1

    def config(self, *, on_failure: str = "stop") -> None:
        example = (ROOT / "config.example.toml").read_text()
        # The documented tick actions, as they are: the roll is tested with them.
        actions = example[example.index("[[actions]]") : example.index("[rollout]")]
        self.service.config(
            service=f'name = "{self.service.name}"\ngreen_name = "{self.service.green}"\n'
            f"port = {self.service.port}\ngreen_port = {self.service.green_port}\n"
            'env_file = ".env.docker"\nstop_timeout = 5\nreplicas = 3\n',
            env={"REPORT_URL": self.report_url},
            extra=f'{actions}\n[rollout]\non_failure = "{on_failure}"\n',
        )

    @property
    def members(self) -> list[ReplicaConfig]:
        """The replicas as the tool reads them from the config."""
        return self.service.settings().service.replica_list()

    def start_blues(self, version: str) -> dict[str, str]:
        """Each replica's blue at ``version``; all but the first drained. Their ids by name."""
        app = self.service.write_app(version, knobs=TICKS)
        image = f"{self.service.repo}:{version}"
        docker("build", "-q", "--build-arg", f"BASE={BASE_IMAGE}", "-t", image, str(app))
        ids = {}
        for i, replica in enumerate(self.members):
            assert replica.container is not None
            env_file = str(self.service.workdir / ".env.docker")
            ids[replica.container] = docker(
                "run", "-d", "--name", replica.container, "--network", "host",
                "--restart", "unless-stopped", "--env-file", env_file,
                "-e", f"PORT={replica.port}", "-e", f"REPORT_URL={self.report_url}", image,
            )  # fmt: skip
            until_serving(self.service, replica.port)
            if i > 0:
                post(self.service.url(replica.port, "/api/brain/tick/drain"))
        return ids

    def serving(self) -> list[str | None]:
        return [self.service.serving(r.port) for r in self.members]

    def ids(self) -> dict[str, str]:
        names = [str(r.container) for r in self.members]
        return {name: self.service.inspect(name)["Id"][:12] for name in names}

    def tickers(self) -> list[int]:
        """The replicas (by port) whose answering process runs its loop undrained."""
        found = []
        for r in self.members:
            body = get_json(self.service.url(r.port, "/api/brain/tick/status"))
            if isinstance(body, dict) and body.get("loop_running") and not body.get("draining"):
                found.append(r.port)
        return found

    def cleanup(self) -> None:
        for i in range(1, 4):
            subprocess.run(
                ["nft", "delete", "table", "inet", table_name(f"{self.service.name}-{i}")],
                capture_output=True,
                check=False,
            )


def post(url: str) -> Any:
    request = urllib.request.Request(url, data=b"{}", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def until_serving(service: Service, port: int) -> None:
    for _ in range(400):
        if service.serving(port) is not None:
            return
        threading.Event().wait(0.05)
    raise RuntimeError(f"nothing serves on {port}")


class TickWatch(Sampler):
    """Reads every replica's tick status in turn, every 20 ms, all through the roll."""

    def __init__(self, replicas: Replicas) -> None:
        super().__init__("", 0.02)
        self.replicas = replicas
        self.rounds: list[list[int]] = []

    def sample(self) -> None:
        self.rounds.append(self.replicas.tickers())


@pytest.fixture
def replicas(service: Service, collector: Collector) -> Iterator[Replicas]:
    found = Replicas(service, collector.url)
    try:
        yield found
    finally:
        found.cleanup()


@contextlib.contextmanager
def probing(service: Service, replicas: Replicas) -> Iterator[list[Prober]]:
    probers = [Prober(service.version_url(r.port)) for r in replicas.members]
    with contextlib.ExitStack() as stack:
        for prober in probers:
            stack.enter_context(prober)
        yield probers


def results(run: Run) -> list[tuple[str, str]]:
    return [(e["host"], e["result"]) for e in run.event("rollout.host")]


def test_three_replicas_roll_one_at_a_time_and_one_ticks_throughout(
    service: Service, replicas: Replicas, collector: Collector
) -> None:
    """3 replicas each get the new version, one after the other, 0 failed requests on each
    port, built and migrated once, and never more than one replica ticking undrained."""
    replicas.config()
    replicas.start_blues("1.0.0")
    service.write_app("2.0.0", knobs=TICKS)
    names = [str(r.container) for r in replicas.members]
    with probing(service, replicas) as probers, TickWatch(replicas) as watch:
        run = service.deploy(timeout=400)
    assert run.code == 0, run.tail()
    assert replicas.serving() == ["2.0.0"] * 3
    assert results(run) == [(n, "deployed") for n in names]
    assert service.containers() == names
    for prober in probers:
        assert prober.failures == 0, prober.errors[:5]
        assert prober.versions == ["1.0.0", "2.0.0"]
    started = [e["step"] for e in run.event("deploy.step.started")]
    assert started.count("build") == 1 and started.count("migrate") == 1
    # One replica at a time: each deploy ends before the next begins.
    began = [e for e in run.events if e.get("event") in ("deploy.started", "rollout.host")]
    assert [e["event"] for e in began] == ["deploy.started", "rollout.host"] * 3
    assert watch.rounds and max(len(r) for r in watch.rounds) <= 1, [
        r for r in watch.rounds if len(r) > 1
    ][:5]
    assert replicas.tickers() == [service.port]
    # Only replica 1's processes (blue, then the new one) dispatched, before and after.
    dispatchers = {e["port"] for e in collector.of("dispatch")}
    assert dispatchers == {service.port}, collector.of("dispatch")
    # Each replica is a unit of its own for status and history.
    status = service.run("status", "--json")
    assert status.code == 0, status.tail()
    history = service.run("history", "--json", "--replica", names[1])
    assert history.code == 0 and f'"{names[1]}"' in history.stdout, history.tail()


@pytest.mark.parametrize("on_failure", ["stop", "rollback-all"])
def test_second_replica_failing_stops_the_roll(
    service: Service, replicas: Replicas, collector: Collector, on_failure: str
) -> None:
    """Replica 2's new version fails on its port: it rolls back, replica 3 is untouched, and
    replica 1 keeps the new version (stop) or gets the old one back (rollback-all)."""
    replicas.config(on_failure=on_failure)
    before = replicas.start_blues("1.0.0")
    second = replicas.members[1]
    service.write_app("2.0.0", knobs={**TICKS, "FAIL_ON_PORT": str(second.port)})
    names = [str(r.container) for r in replicas.members]
    with probing(service, replicas) as probers:
        run = service.deploy(timeout=400)
    assert run.code == 1, run.tail()
    first = "deployed" if on_failure == "stop" else "reverted"
    assert results(run)[:2] == [(names[0], "deployed"), (names[1], "rolled-back")]
    assert f"{names[0]:<16} {first}" in run.stderr
    assert f"{names[2]:<16} not-started" in run.stderr
    expected = ["2.0.0" if on_failure == "stop" else "1.0.0", "1.0.0", "1.0.0"]
    assert replicas.serving() == expected
    assert service.containers() == names
    assert replicas.ids()[names[2]] == before[names[2]][:12]
    for prober in probers:
        assert prober.failures == 0, prober.errors[:5]
    # Replica 2's blue came back from its stop undrained; the rollback drained it again.
    assert replicas.tickers() == [service.port]


def test_sigkill_mid_roll_then_recover_leaves_each_replica_one_serving_container(
    service: Service, replicas: Replicas
) -> None:
    """SIGKILL during replica 2's switch, then recover: every replica has one serving
    container and no redirect is left (recover runs no actions: see the README)."""
    replicas.config()
    replicas.start_blues("1.0.0")
    service.write_app("2.0.0", knobs=TICKS)
    names = [str(r.container) for r in replicas.members]
    killed = service.deploy_interrupted("switch", signal.SIGKILL, host=names[1], timeout=400)
    assert killed.code == -signal.SIGKILL, killed.tail()
    run = service.recover()
    assert run.code == 0, run.tail()
    assert all(f"{name}: consistent" in run.stderr for name in names), run.stderr
    assert service.containers() == names
    served = replicas.serving()
    assert served[0] == "2.0.0" and served[2] == "1.0.0" and served[1] in ("1.0.0", "2.0.0")
    assert not any(
        subprocess.run(
            ["nft", "list", "table", "inet", table_name(name)], capture_output=True, check=False
        ).returncode
        == 0
        for name in names
    )
