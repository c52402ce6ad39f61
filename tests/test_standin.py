"""The stand-in Brain (tests/app/app.py) itself, without an engine: its answers and side effects.

Each test runs `python3 tests/app/app.py serve` (or migrate, selfcheck) as a process on a
free port with a database file of its own, short timings, and polls with a bounded
deadline. The real answers the shapes are checked against were captured from v1.98.0.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.support import APP_DIR, free_port, json_type, until

FAST = {"LOOP_INTERVAL": "0.1", "TICK_INTERVAL": "0.3", "TICK_DURATION": "0.05"}

# GET /api/brain/tick/status of the real v1.98.0 (nested objects shortened).
REAL_TICK_STATUS: dict[str, Any] = {
    "enabled": True,
    "loop_running": True,
    "draining": False,
    "drain_started_at": None,
    "interval_minutes": 5,
    "loop_interval_ms": 5000,
    "last_tick": None,
    "next_tick": "2026-12-02T07:54:59.977Z",
    "actions_today": 0,
    "tick_running": False,
    "last_dispatch": None,
    "startup_ok": True,
    "startup_error_count": 0,
    "recovery_timer_active": False,
    "recovery_attempts": None,
    "max_concurrent": 3,
    "auto_dispatch_max": 1,
    "resources": {},
    "slot_budget": {},
    "dispatch_timeout_minutes": 60,
    "circuit_breakers": {},
    "alertness": {},
    "quarantine": {"total": 0, "by_reason": {}},
}
# What a real null may be once set (tick.js: an ISO time, an object).
MAY_BE_SET = {
    "drain_started_at": "string",
    "last_tick": "string",
    "last_dispatch": "object",
    "recovery_attempts": "object",
}
REAL_HEALTH: dict[str, Any] = {
    "status": "healthy",
    "organs": {
        "scheduler": {"status": "running", "enabled": True, "last_tick": None, "max_concurrent": 3},
        "circuit_breaker": {"status": "all_closed", "open": [], "states": {}},
        "event_bus": {"status": "active"},
        "notifier": {"status": "unconfigured"},
        "planner": {"status": "v2"},
    },
    "timestamp": "2026-12-02T07:49:59.946Z",
}


def read_db(path: Path) -> dict[str, Any]:
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        if not path.exists():
            return {}
        data: dict[str, Any] = json.loads(path.read_text())
        return data


def edit_db(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """A change to the database under its lock, as another Brain would make it."""
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        change(data)
        path.write_text(json.dumps(data))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Brain:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def call(self, method: str, path: str) -> tuple[int, Any, Message]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/api/brain{path}", method=method, data=None
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read()), response.headers
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read()), exc.headers

    def get(self, path: str) -> Any:
        code, body, _ = self.call("GET", path)
        assert code == 200, body
        return body

    def post(self, path: str) -> Any:
        code, body, _ = self.call("POST", path)
        assert code == 200, body
        return body

    def tick(self) -> dict[str, Any]:
        status: dict[str, Any] = self.get("/tick/status")
        return status

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get("/health")
        return body

    def output(self) -> str:
        return self.log.read_text()


@dataclass
class Brains:
    """Starts stand-in processes for one test; all are killed at its end."""

    tmp: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, db: Path, **env: str) -> dict[str, str]:
        # Not the caller's environment: only what the test states.
        return {"PATH": os.environ["PATH"], "ENV_REGION": "us", "BRAIN_DB": str(db), **env}

    def start(self, db: Path, **env: str) -> Brain:
        """``app.py serve``, returned once it answers HTTP (its loop may not run yet)."""
        port = free_port()
        log = self.tmp / f"brain-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, str(APP_DIR / "app.py"), "serve"],
                env=self.env(db, PORT=str(port), **env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started.append(process)
        brain = Brain(process, port, log)

        def answers() -> bool:
            assert process.poll() is None, f"exited {process.returncode}: {brain.output()}"
            with contextlib.suppress(OSError, ValueError):
                return brain.call("GET", "/hardening/status")[0] == 200
            return False

        until(answers, f"the stand-in on {port} answers")
        return brain

    def run(
        self, command: str, db: Path, *, app: Path = APP_DIR, **env: str
    ) -> subprocess.CompletedProcess[str]:
        """``app.py COMMAND`` (migrate, selfcheck, serve) to its end."""
        return subprocess.run(
            [sys.executable, str(app / "app.py"), command],
            env=self.env(db, PORT=str(free_port()), **env),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def release(self, version: str, **knobs: str) -> Path:
        """A copy of the app as release ``version`` with ``knobs`` in its package.json."""
        app = self.tmp / f"app-{version}"
        shutil.copytree(APP_DIR, app)
        package = {"name": "brain", "version": version, "knobs": knobs}
        (app / "package.json").write_text(json.dumps(package))
        return app

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(10)


@pytest.fixture
def brains(tmp_path: Path) -> Iterator[Brains]:
    b = Brains(tmp_path)
    try:
        yield b
    finally:
        b.stop_all()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """The database's file in a directory of its own (a bind mount's, in the e2e tests)."""
    (tmp_path / "shared").mkdir()
    return tmp_path / "shared" / "brain-db.json"


def running(brain: Brain) -> dict[str, Any] | None:
    status = brain.tick()
    return status if status["loop_running"] else None


# ---------------------------------------------------------------- shapes


def test_answers_have_every_real_key_with_its_json_type(brains: Brains, db: Path) -> None:
    """Tick status, health and hardening status carry the real keys with the real JSON types."""
    brain = brains.start(db)  # the default timings: the real ones
    status = until(lambda: running(brain), "the loop runs")
    assert list(status) == list(REAL_TICK_STATUS)
    for key, real in REAL_TICK_STATUS.items():
        allowed = {json_type(real), MAY_BE_SET.get(key, json_type(real))}
        assert json_type(status[key]) in allowed, key
    assert status["interval_minutes"] == 5 and status["loop_interval_ms"] == 5000
    assert set(status["quarantine"]) == {"total", "by_reason"}

    health = brain.health()
    assert list(health) == list(REAL_HEALTH) and health["status"] == "healthy"
    for organ, real in REAL_HEALTH["organs"].items():
        assert list(health["organs"][organ]) == list(real), organ
    assert health["organs"]["scheduler"]["status"] == "running"

    hardening = brain.get("/hardening/status")
    assert list(hardening) == ["version", "checked_at", "overall_status", "features", "port"]
    assert (hardening["version"], hardening["port"]) == ("1.0.0", brain.port)


def test_unknown_paths_answer_404(brains: Brains, db: Path) -> None:
    """A path the stand-in does not serve answers 404 {"error": "not found"}."""
    brain = brains.start(db)
    assert brain.call("GET", "/nothing")[:2] == (404, {"error": "not found"})
    assert brain.call("POST", "/tick/nothing")[:2] == (404, {"error": "not found"})


def test_it_queues_connections_as_nodes_listen_does(brains: Brains, db: Path) -> None:
    """The listening socket's backlog is Node's default, 511 (socketserver's 5 drops SYNs)."""
    brain = brains.start(db)
    listening = subprocess.run(
        ["ss", "-Hltn", f"sport = :{brain.port}"], capture_output=True, text=True, check=True
    ).stdout
    # For a listening socket, ss shows the backlog as Send-Q (the third column).
    assert [line.split()[2] for line in listening.splitlines()] == ["511"]


# ---------------------------------------------------------------- drain


def test_drain_status_with_nothing_in_progress_disables_the_tick(brains: Brains, db: Path) -> None:
    """drain-status finding no task ends the drain, disables the DB tick and stops the loop."""
    brain = brains.start(db, **FAST)
    until(lambda: running(brain), "the loop runs")
    drain = brain.post("/tick/drain")
    assert drain == {
        "success": True,
        "draining": True,
        "drain_started_at": drain["drain_started_at"],
        "in_progress_tasks": [],
        "remaining": 0,
    }
    again = brain.post("/tick/drain")
    assert again == {
        "success": True,
        "already_draining": True,
        "draining": True,
        "drain_started_at": drain["drain_started_at"],
    }

    done = brain.get("/tick/drain-status")
    assert done == {
        "draining": False,
        "drain_completed": True,
        "drain_started_at": drain["drain_started_at"],
        "drain_ended_at": done["drain_ended_at"],
        "in_progress_tasks": [],
        "remaining": 0,
    }
    assert read_db(db)["tick_enabled"] is False
    status = brain.tick()
    assert (status["enabled"], status["loop_running"], status["draining"]) == (False, False, False)
    assert status["next_tick"] is None
    health = brain.health()
    assert (health["status"], health["organs"]["scheduler"]["status"]) == ("degraded", "stopped")
    assert brain.get("/tick/drain-status") == {
        "draining": False,
        "in_progress_tasks": [],
        "remaining": 0,
    }

    # drain-cancel clears a flag that is no longer set; it re-enables nothing.
    assert brain.post("/tick/drain-cancel") == {"success": True, "was_draining": False}
    assert read_db(db)["tick_enabled"] is False
    assert brain.tick()["loop_running"] is False
    assert brain.health()["status"] == "degraded"


def test_drain_status_waits_for_every_task_in_the_database(brains: Brains, db: Path) -> None:
    """Tasks in progress anywhere in the DB (another instance's) hold the drain open."""
    brain = brains.start(db, **FAST)
    until(lambda: running(brain), "the loop runs")
    started = iso(datetime.now(UTC))
    task = {
        "id": "t-elsewhere",
        "title": "dispatched by another instance",
        "status": "in_progress",
        "started_at": started,
        "ends_at": iso(datetime.now(UTC) + timedelta(hours=1)),
    }
    edit_db(db, lambda data: data.setdefault("tasks", []).append(task))
    view = {"id": "t-elsewhere", "title": "dispatched by another instance", "started_at": started}

    drain = brain.post("/tick/drain")
    assert (drain["in_progress_tasks"], drain["remaining"]) == ([view], 1)
    status = brain.get("/tick/drain-status")
    assert status == {
        "draining": True,
        "drain_started_at": drain["drain_started_at"],
        "in_progress_tasks": [view],
        "remaining": 1,
    }
    assert brain.tick()["loop_running"] is True and read_db(db).get("tick_enabled") is not False

    def ended(data: dict[str, Any]) -> None:
        data["tasks"][-1]["ends_at"] = iso(datetime.now(UTC))

    edit_db(db, ended)
    assert brain.get("/tick/drain-status")["drain_completed"] is True
    assert read_db(db)["tick_enabled"] is False


def test_a_drained_brain_ticks_without_dispatching_and_cancel_resumes(
    brains: Brains, db: Path
) -> None:
    """While drained the loop still ticks (tick_last moves) but adds no task; cancel resumes."""
    brain = brains.start(db, **FAST)
    until(lambda: read_db(db).get("tasks"), "a first dispatch")
    brain.post("/tick/drain")
    tasks = len(read_db(db)["tasks"])  # a tick under way when drained may have dispatched
    last = until(lambda: read_db(db).get("tick_last"), "a tick")
    until(lambda: read_db(db)["tick_last"] != last, "a tick after the drain")
    last = read_db(db)["tick_last"]
    until(lambda: read_db(db)["tick_last"] != last, "a second tick after the drain")
    assert len(read_db(db)["tasks"]) <= tasks + 1
    tasks = len(read_db(db)["tasks"])
    assert brain.tick()["draining"] is True and brain.health()["status"] == "healthy"

    assert brain.post("/tick/drain-cancel") == {"success": True, "was_draining": True}
    until(lambda: len(read_db(db)["tasks"]) > tasks, "a dispatch after the cancel")
    assert brain.tick()["draining"] is False


def test_enable_restarts_the_loop_and_disable_stops_it(brains: Brains, db: Path) -> None:
    """POST enable writes the DB flag and starts the loop; POST disable undoes both."""
    brain = brains.start(db, **FAST)
    until(lambda: running(brain), "the loop runs")
    brain.post("/tick/drain")
    assert brain.get("/tick/drain-status")["drain_completed"] is True
    assert brain.tick()["loop_running"] is False

    assert brain.post("/tick/enable") == {"success": True, "enabled": True, "loop_running": True}
    assert read_db(db)["tick_enabled"] is True
    status = brain.tick()
    assert (status["enabled"], status["loop_running"]) == (True, True)
    assert brain.health()["status"] == "healthy"
    last = read_db(db).get("tick_last")
    until(lambda: read_db(db).get("tick_last") != last, "a tick of the restarted loop")

    assert brain.post("/tick/disable") == {
        "success": True,
        "enabled": False,
        "loop_running": False,
    }
    assert read_db(db)["tick_enabled"] is False
    assert brain.health()["status"] == "degraded"


# ---------------------------------------------------------------- enablement at boot


def test_a_non_true_cecelia_tick_enabled_defers_to_the_db(brains: Brains, db: Path) -> None:
    """CECELIA_TICK_ENABLED=false starts the loop only if the DB says enabled; true writes it."""
    edit_db(db, lambda data: data.update(tick_enabled=False))
    off = brains.start(db, CECELIA_TICK_ENABLED="false", **FAST)
    until(lambda: "Tick is disabled in DB" in off.output(), "initTickLoop ran")
    assert off.tick()["loop_running"] is False and off.health()["status"] == "degraded"
    assert read_db(db)["tick_enabled"] is False

    edit_db(db, lambda data: data.update(tick_enabled=True))
    on = brains.start(db, CECELIA_TICK_ENABLED="false", **FAST)
    until(lambda: running(on), "the loop of a Brain booting on an enabled DB")

    edit_db(db, lambda data: data.update(tick_enabled=False))
    forced = brains.start(db, CECELIA_TICK_ENABLED="true", **FAST)
    until(lambda: running(forced), "the loop of a Brain booting with true")
    assert read_db(db)["tick_enabled"] is True
    assert off.tick()["loop_running"] is False  # the loop is per process


def test_a_disabled_db_keeps_a_booting_instance_off(brains: Brains, db: Path) -> None:
    """One instance's completed drain disables the DB: a second, booting without true, stays off."""
    first = brains.start(db, **FAST)
    until(lambda: running(first), "the first loop runs")
    first.post("/tick/drain")
    assert first.get("/tick/drain-status")["drain_completed"] is True

    second = brains.start(db, **FAST)  # CECELIA_TICK_ENABLED unset
    until(lambda: "Tick is disabled in DB" in second.output(), "the second's initTickLoop")
    assert second.tick()["loop_running"] is False
    assert second.health()["status"] == "degraded"
    assert second.tick()["enabled"] is False


def test_a_second_instances_ticks_move_next_tick(brains: Brains, db: Path) -> None:
    """next_tick comes from the shared DB's tick_last: another instance's ticks move it."""
    idle = brains.start(db, LOOP_INTERVAL="3600", TICK_INTERVAL="60")  # never fires
    until(lambda: running(idle), "the idle instance's loop runs")
    assert idle.tick()["last_tick"] is None
    ticking = brains.start(db, **FAST)
    seen = until(lambda: idle.tick()["last_tick"], "the other instance's tick")
    until(lambda: idle.tick()["last_tick"] != seen, "the other instance's next tick")
    status = idle.tick()
    assert parse(status["next_tick"]) == parse(status["last_tick"]) + timedelta(seconds=60)
    assert ticking.tick()["last_tick"] is not None
    assert "tick_start" not in idle.output()


def test_a_tick_runs_only_an_interval_after_the_last_one_ended(brains: Brains, db: Path) -> None:
    """The loop fires every LOOP_INTERVAL, but ticks TICK_INTERVAL after the previous tick ended."""
    brains.start(db, LOOP_INTERVAL="0.05", TICK_INTERVAL="0.4", TICK_DURATION="0.2")
    ticks: list[str] = []

    def three() -> bool:
        last = read_db(db).get("tick_last")
        if last and (not ticks or ticks[-1] != last):
            ticks.append(last)
        return len(ticks) >= 3

    until(three, "three ticks")
    starts = [parse(t) for t in ticks]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(starts)]
    # tick_last is a tick's start: the next one starts at least duration + interval later.
    assert all(gap >= 0.6 - 0.002 for gap in gaps), gaps


def test_tick_skip_last_leaves_next_tick_in_the_past(brains: Brains, db: Path) -> None:
    """With TICK_SKIP_LAST ticks run and dispatch but next_tick stays an hour in the past."""
    long_ago = iso(datetime.now(UTC) - timedelta(hours=1))
    edit_db(db, lambda data: data.update(tick_last=long_ago))
    brain = brains.start(db, TICK_SKIP_LAST="1", **FAST)
    until(lambda: brain.tick()["actions_today"] >= 2, "two ticks dispatched")
    status = brain.tick()
    assert status["last_tick"] == long_ago
    assert parse(status["next_tick"]) == parse(long_ago) + timedelta(seconds=0.3)
    assert parse(status["next_tick"]) < datetime.now(UTC) - timedelta(minutes=59)


# ---------------------------------------------------------------- SIGTERM


def test_sigterm_exits_at_once_cutting_requests_in_flight(brains: Brains, db: Path) -> None:
    """SIGTERM: exit code 0 at once; a request in flight gets no answer (server.js)."""
    brain = brains.start(db, HEALTH_MODE="hang", **FAST)
    outcome: list[str] = []

    def in_flight() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", brain.port, timeout=30)
        try:
            connection.request("GET", "/api/brain/health")
            outcome.append(f"answered {connection.getresponse().status}")
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(f"cut: {exc!r}")
        finally:
            connection.close()

    client = threading.Thread(target=in_flight)
    client.start()
    until(lambda: _connections(brain.process.pid, brain.port) > 0, "the request is in flight")
    brain.process.send_signal(signal.SIGTERM)
    assert brain.process.wait(10) == 0
    client.join(10)
    assert outcome and outcome[0].startswith("cut"), outcome
    assert "SIGTERM received" in brain.output()


def _connections(pid: int, port: int) -> int:
    """Established TCP connections to ``port`` (from /proc/net/tcp and tcp6)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def test_sigterm_graceful_mode_closes_connections_and_exits_0(brains: Brains, db: Path) -> None:
    """SIGTERM_MODE=graceful: answers after SIGTERM say Connection: close; then exit 0."""
    brain = brains.start(db, SIGTERM_MODE="graceful", SHUTDOWN_DELAY="1", **FAST)
    assert brain.call("GET", "/health")[2].get("Connection") != "close"
    brain.process.send_signal(signal.SIGTERM)

    def closes() -> bool:
        with contextlib.suppress(OSError):
            return brain.call("GET", "/hardening/status")[2].get("Connection") == "close"
        return False

    until(closes, "an answer with Connection: close")
    assert brain.process.wait(10) == 0
    assert "bye" in brain.output()


@pytest.mark.parametrize("ask", ["signal", "request"])
def test_a_drain_closes_idle_connections_and_says_connection_close(
    brains: Brains, db: Path, ask: str
) -> None:
    """Test-only drain (STANDIN_DRAIN_SIGNAL, POST /__standin/drain): an idle keep-alive
    connection is closed long before its idle timeout, later answers say Connection: close,
    and the process goes on serving."""
    brain = brains.start(db, STANDIN_DRAIN_SIGNAL="SIGUSR2", KEEPALIVE_TIMEOUT="60", **FAST)
    kept = http.client.HTTPConnection("127.0.0.1", brain.port, timeout=10)
    try:
        kept.request("GET", "/api/brain/health")
        first = kept.getresponse()
        first.read()
        assert first.getheader("Connection") != "close"
        assert kept.sock is not None
        if ask == "signal":
            brain.process.send_signal(signal.SIGUSR2)
        else:
            drain = f"http://127.0.0.1:{brain.port}/__standin/drain"
            request = urllib.request.Request(drain, method="POST")
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
        # EOF from the server: the drain closed it (its idle timeout is 60 s).
        assert kept.sock.recv(1) == b""
    finally:
        kept.close()
    assert brain.call("GET", "/hardening/status")[2].get("Connection") == "close"
    assert brain.process.poll() is None
    assert "draining connections" in brain.output()


# ---------------------------------------------------------------- migrations, self-check


def test_migrate_to_schema_077_and_never_back(brains: Brains, db: Path) -> None:
    """A release with SCHEMA = "077" migrates the DB to 077; an older build's migrate keeps it."""
    first = brains.run("migrate", db)
    assert first.returncode == 0, first.stdout
    assert (read_db(db)["schema_version"], read_db(db)["region"]) == ("076", "us")
    assert "[MIGRATE] Applied 1 migration(s)" in first.stdout

    newer = brains.release("2.0.0", SCHEMA="077")
    second = brains.run("migrate", db, app=newer)
    assert second.returncode == 0, second.stdout
    assert "[APPLY] 077" in second.stdout and read_db(db)["schema_version"] == "077"

    older = brains.run("migrate", db)
    assert older.returncode == 0 and "All migrations already applied" in older.stdout
    assert read_db(db)["schema_version"] == "077"


def test_selfcheck_fails_an_older_build_on_a_newer_schema(brains: Brains, db: Path) -> None:
    """After 077's migrations the 076 build's self-check exits 1, and so does its boot."""
    newer = brains.release("2.0.0", SCHEMA="077")
    assert brains.run("migrate", db, app=newer).returncode == 0
    assert brains.run("selfcheck", db, app=newer).returncode == 0

    check = brains.run("selfcheck", db)
    assert check.returncode == 1
    assert '[FAIL] Schema Version: DB="077" expected="076"' in check.stdout
    assert "[PASS] DB Region Match" in check.stdout

    boot = brains.run("serve", db)
    assert boot.returncode == 1
    assert "[FATAL] Self-check failed. Brain will NOT start." in boot.stdout


@pytest.mark.parametrize("region", ["hk", "eu", ""], ids=["other-region", "invalid", "unset"])
def test_selfcheck_fails_on_the_wrong_region(brains: Brains, db: Path, region: str) -> None:
    """ENV_REGION must be us or hk and equal the DB's region, or the Brain does not boot."""
    assert brains.run("migrate", db).returncode == 0  # a "us" database
    boot = brains.run("serve", db, ENV_REGION=region)
    assert boot.returncode == 1
    assert "[FAIL] " in boot.stdout and "Brain will NOT start" in boot.stdout


def test_an_hk_database_boots_an_hk_brain(brains: Brains, db: Path) -> None:
    """A database created with DB_REGION=hk passes the self-check of ENV_REGION=hk only."""
    assert brains.run("migrate", db, DB_REGION="hk").returncode == 0
    assert brains.run("selfcheck", db, ENV_REGION="hk").returncode == 0
    assert brains.run("selfcheck", db, ENV_REGION="us").returncode == 1


def test_a_failing_or_interrupted_migration(brains: Brains, db: Path) -> None:
    """MIGRATE_FAIL exits 1 with the DB untouched; SIGTERM during MIGRATE_SLEEP exits 42."""
    failed = brains.run("migrate", db, MIGRATE_FAIL="1")
    assert failed.returncode == 1 and "relation already exists" in failed.stdout
    assert read_db(db) == {}
    with subprocess.Popen(
        [sys.executable, str(APP_DIR / "app.py"), "migrate"],
        env=brains.env(db, MIGRATE_SLEEP="30"),
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("migrating to")
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 42
        assert "rolled back its transaction" in process.stdout.read()
