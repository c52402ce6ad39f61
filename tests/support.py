"""Helpers for tests on the real Docker engine: one isolated service per test.

Each test gets unique container names, free ports and its own image repository,
and the fixture removes all of them afterwards. Blue is started the way the
reference user's bash script does it: with the docker CLI.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import aiohttp
import pytest

from rolling_update import DeployContext
from rolling_update._config.settings import Config, load_config, parse_config
from rolling_update._deploy.records import Preflight
from rolling_update._deploy.release import Release
from rolling_update._engine.model import Engine
from rolling_update._errors import ConfigError
from rolling_update._handoff.nft import RedirectRule, table_name
from rolling_update._state.journal import Journal, JournalRecord
from rolling_update._state.mark import marker_name

DOCKER = os.environ.get("DOCKER_CLI", "/usr/bin/docker")
BASE_IMAGE = os.environ.get("RU_TEST_BASE", "rolling-update-test-base:bookworm-tini")
APP_DIR = Path(__file__).resolve().parent / "app"
ROOT = APP_DIR.parent.parent


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def swapped(text: str, swaps: Sequence[tuple[str, str]], what: str) -> str:
    """``text`` with each regex swapped for its value; each must match (``what`` says where)."""
    for pattern, value in swaps:
        text, count = re.subn(pattern, value, text)
        assert count, f"{what} no longer has {pattern}"
    return text


def unit_config(tmp_path: Path, **tables: dict[str, Any]) -> Config:
    """The smallest config, of service ``app`` (green ``app-green``), plus ``tables``."""
    data = {
        "service": {"name": "app", "green_name": "app-green", "port": 1, "green_port": 2},
        "image": {"name": "app:{version}", "version_file": "p.json"},
        **tables,
    }
    return parse_config(data, base_dir=tmp_path, environ={}, source="t.toml")


def unit_context(
    cfg: Config, engine: Engine, http: aiohttp.ClientSession, found: Preflight | None = None
) -> DeployContext:
    """A deploy of ``app:2`` with ``cfg`` on ``engine`` (a FakeEngine); ``found`` is what its
    preflight found (nothing, by default)."""
    return DeployContext(
        config=cfg,
        engine=engine,
        http=http,
        deploy_id="d",
        release=Release(version="2", image="app:2", env={}),
        found=found or Preflight(blue=None, blue_health=None),
    )


def require_engine() -> None:
    """Fail (not skip) without an engine: CI must never pass by skipping these."""
    try:
        docker("info", "--format", "{{.ServerVersion}}", timeout=10)
        docker("image", "inspect", BASE_IMAGE, timeout=10)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(
            f"needs a running Docker engine and the image {BASE_IMAGE}: run "
            f"`bash scripts/test-env.sh` first ({exc})"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 1.0) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def until(check: Callable[[], Any], what: str, timeout: float = 10, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy, and return that; fail after
    ``timeout`` s saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(interval)
    return result


def cli_environ(
    environ: Mapping[str, str] | None = None, unset: Sequence[str] = ("ENV_REGION",)
) -> dict[str, str]:
    """The environment a test runs the CLI in: this one without ``unset`` (ENV_REGION: the
    configs' ``${ENV_REGION:-us}`` default applies), plus ``environ``."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(environ or {})
    return env


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m rolling_update ARGS`` with no Docker engine to reach, in a process of its
    own: the CLI configures logging for the whole interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "rolling_update", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"},
    )


def replicated_config(folder: Path, service: str, hosts: str) -> Path:
    """A config file in ``folder`` of two replicas of ``app`` (5221/5222 on), its state
    there too: ``service`` adds keys to its [service] table, ``hosts`` its [[hosts]]."""
    path = folder / "ru.toml"
    path.write_text(
        "[image]\n"
        'name = "app:{version}"\n'
        'version_file = "package.json"\n'
        "[state]\n"
        'dir = "state"\n'
        "[service]\n"
        'name = "app"\n'
        'green_name = "app-green"\n'
        "port = 5221\n"
        "green_port = 5222\n"
        "replicas = 2\n"
        f"{service}\n{hosts}\n"
    )
    return path


def host_state_dir(service: str) -> Path:
    """The per-host state directory of ``service`` when its config names none, as the
    tool computes it."""
    data = {
        "service": {"name": service, "green_name": f"{service}-g", "port": 1, "green_port": 2},
        "image": {"name": "x:{version}", "version_file": "p.json"},
    }
    return parse_config(data, base_dir=ROOT, environ=cli_environ(), source="-").state_dir


class RecordingFirewall:
    """Records the handoff's redirects instead of changing this machine's nftables."""

    bypass_port: int | None = None

    def __init__(self, host_tables: str = "") -> None:
        self.table: tuple[int, RedirectRule] | None = None
        self.host = host_tables
        self.changes: list[str] = []

    async def unavailable(self) -> str | None:
        return None

    async def redirect(self, table: str, port: int, to_port: int, share: int = 100) -> None:
        self.table = (port, RedirectRule(to_port, share))
        part = "" if share == 100 else f" ({share}%)"
        self.changes.append(f"redirect {port} -> {to_port}{part}")

    async def remove(self, table: str) -> None:
        self.table = None
        self.changes.append("remove")

    async def target(self, table: str, port: int | None = None) -> RedirectRule | None:
        return None if self.table is None else self.table[1]

    async def forget(self, port: int, to_port: int) -> int:
        self.changes.append(f"forget {port} <- {to_port}")
        return 0

    async def tcp_tables(self, container_id: str, pid: int) -> str:
        return ""  # no connection to wait for

    async def host_tables(self) -> str:
        return self.host


class Cli:
    """``python -m rolling_update ARGS`` as a user runs it, its output read as it comes.

    The one way tests drive the CLI: :meth:`until_event` reads the JSON log up to an
    event (the barrier a test acts at: the log says the step has started),
    :meth:`signal` signals the CLI, :meth:`finish` waits for its exit and returns the
    whole :class:`Run`. Past ``timeout`` s it is killed and the test fails; leaving the
    ``with`` block ends it too, so a failed test leaves no deploy running.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        environ: Mapping[str, str] | None = None,
        unset: Sequence[str] = ("ENV_REGION",),
        cwd: Path = ROOT,
        merge_stderr: bool = False,
        timeout: float = 180,
    ) -> None:
        self.args = list(args)
        self.timeout = timeout
        self.began = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rolling_update", *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            text=True,
            env=cli_environ(environ, unset),
            cwd=cwd,
        )
        self.out: list[str] = []
        self._err: list[str] = []
        # stderr is read all along: a full pipe would block the CLI mid-run.
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.timed_out = False
        self._watchdog = threading.Timer(timeout, self._expire)
        self._watchdog.daemon = True
        self._watchdog.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read_stderr(self) -> None:
        if self.process.stderr is not None:
            self._err.append(self.process.stderr.read())

    def _expire(self) -> None:
        self.timed_out = True
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def lines(self) -> Iterator[str]:
        """Each further line of its stdout (kept in ``out``), until it closes."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.out.append(line)
            yield line

    def until(self, what: str, matches: Callable[[str], bool]) -> str:
        """Read up to the first line that ``matches``; fail, saying ``what``, if none comes."""
        for line in self.lines():
            if matches(line):
                return line
        run = self.finish()
        pytest.fail(f"{self.args[0]} ended (exit {run.code}) before {what}: {run.tail()}")

    def until_event(self, event: str, **fields: object) -> dict[str, Any]:
        """Read the JSON log up to the first ``event`` with these ``fields``, and return it."""
        found: dict[str, Any] = {}

        def matches(line: str) -> bool:
            if not line.startswith("{"):
                return False
            record = json.loads(line)
            if record.get("event") != event or any(record.get(k) != v for k, v in fields.items()):
                return False
            found.update(record)
            return True

        shown = ", ".join(f"{k}={v}" for k, v in fields.items())
        self.until(f"{event} ({shown})" if shown else event, matches)
        return found

    def signal(self, signum: int, *, repeat: int = 0, interval: float = 0.05) -> None:
        """Send ``signum``, and ``repeat`` more ``interval`` s apart."""
        for i in range(repeat + 1):
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)
            if i < repeat:
                time.sleep(interval)

    def finish(self) -> Run:
        """Read the rest of its output and wait for its exit."""
        for _ in self.lines():
            pass
        code = self.process.wait()
        self._watchdog.cancel()
        self._reader.join()
        run = Run(code, "".join(self.out), "".join(self._err), time.monotonic() - self.began)
        if self.timed_out:
            pytest.fail(f"{self.args[0]} ran past {self.timeout:g}s: {run.tail()}")
        return run

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._watchdog.cancel()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class Barrier:
    """A point a process waits at until the test lets it go: a GET of :attr:`url` is
    answered only after :meth:`release`. A container on the host network reaches it too.

    ``command`` prints a line and waits there: as a migration command, it holds a deploy
    in its migrate step (the lock held, the engine marked) for as long as the test needs.
    SIGTERM ends it at once, as it ends a migration with a handler (as a PID 1 without an
    init such as the stand-in's tini, it would be ignored until the engine's SIGKILL).
    """

    LINE = "waiting at the test's barrier"

    def __init__(self) -> None:
        self.released = threading.Event()
        barrier = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                barrier.released.wait()
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def command(self) -> list[str]:
        code = (
            "import signal, sys, urllib.request; "
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)); "
            f"print({self.LINE!r}, flush=True); "
            "urllib.request.urlopen(sys.argv[1], timeout=600).read()"
        )
        return ["python3", "-c", code, self.url]

    def migration(self) -> str:
        """A ``[migrate]`` table whose first command waits here, then the app's migration."""
        commands = [self.command, ["python3", "/app/app.py", "migrate"]]
        return f"commands = {json.dumps(commands)}\ntimeout = 60\n"

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def barrier() -> Iterator[Barrier]:
    b = Barrier()
    yield b
    b.close()


def json_type(value: object) -> str:
    """The JSON type of a parsed value, as JSON names it (for comparing answers' shapes)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else type(value).__name__


class Sampler(threading.Thread):
    """A background thread calling :meth:`sample` every ``interval`` s while in its ``with``."""

    def __init__(self, url: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, interval
        self._stop_flag = threading.Event()

    def sample(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self._stop_flag.is_set():
            self.sample()
            self._stop_flag.wait(self.interval)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_flag.set()
        self.join(5)


class Prober(Sampler):
    """GETs the URL every 20 ms (a new connection each time) and records what answered.

    A request fails when it is refused, reset, or unanswered for 3 s: a slow answer on
    a loaded 2-core machine is not a handoff's failure, a connection nobody serves is.
    """

    def __init__(self, url: str, interval: float = 0.02) -> None:
        super().__init__(url, interval)
        self.samples: list[tuple[float, str | None]] = []
        self.errors: list[str] = []

    def sample(self) -> None:
        try:
            with urllib.request.urlopen(self.url, timeout=3.0) as response:
                body = json.loads(response.read())
        # HTTPException: an answer cut mid-body (IncompleteRead) when its server is killed.
        except (OSError, ValueError, http.client.HTTPException) as exc:
            body = None
            self.errors.append(f"{time.monotonic():.3f} {exc!r}")
        version = body.get("version") if isinstance(body, dict) else None
        self.samples.append((time.monotonic(), version))

    @property
    def failures(self) -> int:
        return sum(1 for _, version in self.samples if version is None)

    @property
    def versions(self) -> list[str]:
        seen: list[str] = []
        for _, version in self.samples:
            if version is not None and (not seen or seen[-1] != version):
                seen.append(version)
        return seen

    def longest_gap(self, *, to_end: bool = False) -> float:
        """Longest time between two successful answers (the downtime window); ``to_end``:
        failures at the end count too, up to the last request (a port left dark)."""
        gap, last_ok = 0.0, None
        for t, version in self.samples:
            if (version is not None or to_end) and last_ok is not None:
                gap = max(gap, t - last_ok)
            if version is not None:
                last_ok = t
        return gap


@dataclass(frozen=True)
class Exchange:
    """One request of a :class:`KeepAliveProber`: when it was sent (unix time), on which of
    its connections, and the version that answered (``None``: it failed)."""

    sent: float
    connection: int
    version: str | None


class KeepAliveProber(Sampler):
    """GETs ``path`` every 20 ms on one keep-alive connection to ``host``:``port`` and never
    retries: a request that fails is lost, and the next one opens a new connection."""

    def __init__(self, host: str, port: int, path: str, interval: float = 0.02) -> None:
        netloc = f"[{host}]" if ":" in host else host
        super().__init__(f"http://{netloc}:{port}{path}", interval)
        self.host, self.port, self.path = host, port, path
        self.exchanges: list[Exchange] = []
        self.errors: list[str] = []
        self._conn: http.client.HTTPConnection | None = None
        self._opened = 0

    def sample(self) -> None:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=3.0)
            self._opened += 1
        sent = time.time()
        try:
            self._conn.request("GET", self.path)
            body = json.loads(self._conn.getresponse().read())
        except (OSError, ValueError, http.client.HTTPException) as exc:
            body = None
            self.errors.append(f"{sent:.3f} {exc!r}")
            self._conn.close()
            self._conn = None
        version = body.get("version") if isinstance(body, dict) else None
        self.exchanges.append(Exchange(sent, self._opened, version))

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self._conn is not None:
            self._conn.close()

    @property
    def failures(self) -> int:
        return sum(1 for e in self.exchanges if e.version is None)

    def answered_across(self, moment: float) -> bool:
        """Whether a connection opened before ``moment`` (unix time) answered a request sent
        after it: that connection was not cut at ``moment``."""
        before = {e.connection for e in self.exchanges if e.sent < moment}
        return any(
            e.connection in before and e.sent > moment and e.version is not None
            for e in self.exchanges
        )


@dataclass
class Service:
    """One test's service: names, ports, app directory, config, and cleanup."""

    workdir: Path
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    port: int = field(default_factory=free_port)
    green_port: int = field(default_factory=free_port)

    @property
    def name(self) -> str:
        return f"rutest-{self.uid}"

    @property
    def green(self) -> str:
        return f"{self.name}-green"

    @property
    def repo(self) -> str:
        return f"rutest-{self.uid}"

    def url(self, port: int | None = None, path: str = "/api/brain/health") -> str:
        return f"http://127.0.0.1:{port or self.port}{path}"

    def version_url(self, port: int | None = None) -> str:
        """Where the stand-in, like the Brain, tells its version (its health does not)."""
        return self.url(port, "/api/brain/hardening/status")

    def serving(self, port: int | None = None) -> str | None:
        """The version answering on production's port (or ``port``), if any."""
        body = get_json(self.version_url(port))
        return body.get("version") if isinstance(body, dict) else None

    def health(self) -> dict[str, Any]:
        body = get_json(self.url())
        return body if isinstance(body, dict) else {}

    def write_app(
        self, version: str, *, knobs: Mapping[str, object] | None = None, dockerfile_extra: str = ""
    ) -> Path:
        """The app at ``version``; ``knobs`` make this release misbehave (see tests/app/app.py)."""
        app = self.workdir / "brain"
        shutil.rmtree(app, ignore_errors=True)
        shutil.copytree(APP_DIR, app)
        package = {"name": "brain", "version": version, "knobs": dict(knobs or {})}
        (app / "package.json").write_text(json.dumps(package))
        if dockerfile_extra:
            with (app / "Dockerfile").open("a") as f:
                f.write(dockerfile_extra + "\n")
        return app

    def write_env_file(self, env: Mapping[str, str]) -> Path:
        path = self.workdir / ".env.docker"
        path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        return path

    def start_blue(
        self,
        version: str = "1.0.0",
        env: Mapping[str, str] | None = None,
        *,
        args: Sequence[str] = ("--network", "host", "--restart", "unless-stopped"),
        dockerfile_extra: str = "",
        knobs: Mapping[str, object] | None = None,
    ) -> str:
        """Build and run blue like the reference bash script does (``args``: its run flags).

        ``env`` is the operator's (a twin inherits it); ``knobs`` belong to blue's release.
        """
        app = self.write_app(version, knobs=knobs, dockerfile_extra=dockerfile_extra)
        docker(
            "build",
            "-q",
            "--build-arg",
            f"BASE={BASE_IMAGE}",
            "-t",
            f"{self.repo}:{version}",
            str(app),
        )
        run = ["run", "-d", "--name", self.name, *args]
        if (self.workdir / ".env.docker").exists():
            run += ["--env-file", str(self.workdir / ".env.docker")]
        for k, v in {"PORT": str(self.port), **(env or {})}.items():
            run += ["-e", f"{k}={v}"]
        cid = docker(*run, f"{self.repo}:{version}")
        deadline = time.monotonic() + 20
        while self.serving() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"blue did not come up: {docker('logs', self.name, check=False)}"
                )
            time.sleep(0.05)
        return cid

    def config(
        self,
        *,
        env: Mapping[str, str] | None = None,
        extra: str = "",
        green_env: str = "",
        **sections: str,
    ) -> Path:
        """Write a fast-timing config for this service; ``sections`` replace whole tables."""
        env_lines = "".join(f'{k} = "{v}"\n' for k, v in (env or {}).items())
        tables = {
            "service": f'name = "{self.name}"\ngreen_name = "{self.green}"\nport = {self.port}\n'
            f'green_port = {self.green_port}\nenv_file = ".env.docker"\nstop_timeout = 5\n',
            "image": f'name = "{self.repo}:{{version}}"\nversion_file = "brain/package.json"\n',
            "build": f'context = "brain"\nargs = {{ BASE = "{BASE_IMAGE}" }}\ntimeout = 120\n',
            "migrate": 'commands = [["python3", "/app/app.py", "migrate"]]\ntimeout = 60\n',
            "env": 'ENV_REGION = "${ENV_REGION:-us}"\n' + env_lines,
            "health": 'path = "/api/brain/health"\nexpect_json = { status = "healthy" }\n'
            'version_path = "/api/brain/hardening/status"\ninterval = 0.1\nattempts = 150\n',
            "tick": "settle = 0\nguard = 1\ninterval = 0.1\ntimeout = 30\n",
            "verify": "timeout = 10\nsoak = 1\n",
            "rollback": "step_timeout = 30\n",
            "state": f'dir = "{self.workdir / "state"}"\n',
        }
        tables.update(sections)
        if green_env:
            tables["green.env"] = green_env
        # An empty table text drops the table: its defaults apply.
        tables = {k: v for k, v in tables.items() if v}
        if not (self.workdir / ".env.docker").exists():
            self.write_env_file({})
        text = "".join(f"[{k}]\n{v}\n" for k, v in tables.items()) + extra
        path = self.workdir / "rolling-update.toml"
        path.write_text(text)
        return path

    @property
    def config_path(self) -> Path:
        return self.workdir / "rolling-update.toml"

    def settings(self) -> Config:
        """The config as the tool reads it: names and directories come from here, never
        rebuilt by hand (a naming drift must not make a check of them pass vacuously)."""
        return load_config(self.config_path, environ=cli_environ())

    @property
    def old_name(self) -> str:
        """The name blue carries between the switch and its removal."""
        return self.settings().service.old_name

    @property
    def migrate_name(self) -> str:
        """The name of the one-off migration container."""
        return self.settings().service.migrate_name

    def cli(
        self,
        verb: str,
        *args: str,
        config: Path | None = None,
        log_format: str | None = "json",
        **options: Any,
    ) -> Cli:
        """``python -m rolling_update VERB --config ... ARGS`` started (see :class:`Cli`)."""
        command = [verb, "--config", str(config or self.config_path), *args]
        if log_format is not None:
            command += ["--log-format", log_format]
        return Cli(command, **options)

    def run(self, verb: str, *args: str, timeout: float = 180, **options: Any) -> Run:
        """The CLI run to its end (``options`` as for :meth:`cli`)."""
        with self.cli(verb, *args, timeout=timeout, **options) as cli:
            return cli.finish()

    def deploy(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        timeout: float = 180,
        verb: str = "deploy",
    ) -> Run:
        """Run ``python -m rolling_update deploy`` with JSON logs, as a user would."""
        return self.run(verb, environ=environ, timeout=timeout)

    def recover(self) -> Run:
        return self.run("recover")

    def deploy_interrupted(
        self,
        step: str | None,
        signum: int,
        *,
        host: str | None = None,
        after: str | None = None,
        repeat: int = 0,
        timeout: float = 180,
    ) -> Run:
        """Deploy, sending ``signum`` once the JSON log shows ``step`` started (on ``host``,
        if given), and ``repeat`` more 50 ms apart; with ``after``, the step after that one
        in the deploy's own plan."""
        with self.cli("deploy", timeout=timeout) as cli:
            target = step
            if after is not None:
                steps = cli.until_event("deploy.started")["steps"]
                target = steps[steps.index(after) + 1]
            where = {} if host is None else {"host": host}
            cli.until_event("deploy.step.started", step=target, **where)
            cli.signal(signum, repeat=repeat)
            return cli.finish()

    @property
    def journal(self) -> Path:
        """Where the tool keeps this service's journal (its own path, from the config)."""
        return Journal.path_for(self.settings().state_dir)

    def journal_left(self) -> JournalRecord | None:
        """The journal an unfinished deploy left, as the tool reads it, if any."""
        found = Journal.load(self.journal)
        return None if found is None else found.record

    @property
    def marker(self) -> str:
        """The volume that marks a deploy under way on the engine."""
        return marker_name(self.name)

    def redirected(self) -> bool:
        """Whether the handoff's nftables table of this service exists."""
        found = subprocess.run(
            ["nft", "list", "table", "inet", table_name(self.name)],
            capture_output=True,
            check=False,
        )
        return found.returncode == 0

    def marked(self) -> bool:
        """Whether the engine carries this service's mark of a deploy under way."""
        found = docker("volume", "ls", "-q", "--filter", f"name={self.marker}")
        return self.marker in found.split()

    def containers(self) -> list[str]:
        # Name filters match substrings: keep exact-prefix matches only.
        names = docker("ps", "-a", "--filter", f"name={self.name}", "--format", "{{.Names}}")
        return sorted(n for n in names.split() if n == self.name or n.startswith(self.name + "-"))

    def inspect(self, name: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(docker("inspect", name))
        return data[0]

    def events_since(self, since: float, event: str, fmt: str, *filters: str) -> list[str]:
        """One ``fmt`` line per container ``event`` since ``since`` (unix time), per filter."""
        args = [f"--filter={f}" for f in ("type=container", f"event={event}", *filters)]
        until = f"{time.time():.3f}"
        out = docker("events", "--since", f"{since:.3f}", "--until", until, *args, "--format", fmt)
        return out.splitlines()

    def created_since(self, since: float) -> list[str]:
        """Names of containers of this service the engine created since ``since`` (unix time)."""
        names = self.events_since(since, "create", "{{.Actor.Attributes.name}}")
        return [n for n in names if n.startswith(self.name)]

    def cleanup(self) -> None:
        names = docker("ps", "-aq", "--filter", f"name={self.name}").split()
        if names:
            docker("rm", "-f", "-v", *names, check=False)
        images = docker("images", "-q", self.repo).split()
        if images:
            docker("rmi", "-f", *set(images), check=False)
        docker("volume", "rm", "-f", self.marker, check=False)
        subprocess.run(
            ["nft", "delete", "table", "inet", table_name(self.name)],
            capture_output=True,
            check=False,
        )
        # The state directory the config names, and the per-host default one, which a
        # test may use (both as the tool computes them).
        with contextlib.suppress(ConfigError):
            shutil.rmtree(self.settings().state_dir, ignore_errors=True)
        shutil.rmtree(host_state_dir(self.name), ignore_errors=True)


class Collector:
    """Receives the stand-in app's REPORT_URL events (start, tick_start, sigterm...)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                collector.events.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.server.shutdown()
    c.server.server_close()


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.startswith("{")]

    def event(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    def tail(self, chars: int = 3000) -> str:
        """The end of its output, for a failure's message."""
        return f"{self.stdout[-chars:]}{self.stderr[-chars:]}"


# The tick of the fault cases: settled after 1 s, polled every 0.1 s.
FAULT_TICK = "settle = 1\nguard = 1\ninterval = 0.1\ntimeout = 30\n"


# The phases of a deploy a fault strikes (the steps' names). "handoff" is the redirect,
# one nft transaction of a few milliseconds: the fault sent at its start lands as it
# ends, when the switch begins.
FAULT_PHASES = [
    "build",
    "green-health",
    "tick-boundary",
    "handoff",
    "switch",
    "verify",
    "soak",
    "cleanup",
]


def one_line(run: Run) -> str:
    """The one line a run printed to stderr (more than one fails the test)."""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


MIGRATION_OOM_KILLED = "time.sleep(30)' was OOM-killed (SIGKILL, exit 137: out of memory"
"""What the one line says of :func:`growing_migration`'s command killed for memory."""


def slow_migration(seconds: int, *, timeout: int) -> str:
    """A ``[migrate]`` table whose one command runs ``seconds`` s (a fault lands inside it)."""
    wait = ["python3", "-c", f"import time; time.sleep({seconds})"]
    return f"commands = {json.dumps([wait])}\ntimeout = {timeout}\n"


def growing_migration(mb: int) -> str:
    """A ``[migrate]`` table whose one command takes ``mb`` MiB and holds it for 30 s."""
    grow = ["python3", "-c", f"import time; b = bytearray({mb} << 20); time.sleep(30)"]
    return f"commands = {json.dumps([grow])}\ntimeout = 60\n"


def assert_rolled_back_untouched(service: Service, run: Run, prober: Prober, says: str) -> None:
    """Exit 1, one line saying ``says`` and that the previous version serves; not one request
    failed, and blue alone serves."""
    assert run.code == 1, run.tail()
    line = one_line(run)
    assert says in line, line
    assert line.endswith("(rolled back: the previous version serves)"), line
    assert prober.failures == 0, prober.errors
    assert_serves_only(service, "1.0.0")


def assert_serves_only(service: Service, version: str) -> None:
    """Exactly one production container, running and serving ``version``; nothing else of
    the tool's: no redirect, journal (nor its temporary file) or engine mark."""
    assert service.serving() == version
    assert service.containers() == [service.name]
    assert service.inspect(service.name)["State"]["Status"] == "running"
    assert not service.redirected()
    assert not service.journal.exists() and not service.marked()
    assert not list(service.journal.parent.glob("*.tmp"))


@dataclass
class Struck:
    """A deploy a fault struck: how it ended, and what a client on a production port saw."""

    run: Run
    failures: int
    dark: float
    probes: int

    def report(self, fault: str, phase: str) -> None:
        """The outcome-table row of this case, for the README (pytest -s shows it)."""
        run = self.run
        print(
            f"\nOUTCOME fault={fault} phase={phase} exit={run.code} seconds={run.seconds:.1f}"
            f" failed={self.failures} of={self.probes} dark={self.dark:.2f}"
            f" line={run.stderr.strip()[-300:]!r}"
        )


def deploy_with_fault(
    service: Service,
    phase: str,
    fault: Callable[[], None],
    *,
    event: str = "deploy.step.started",
    url: str | None = None,
    serving: Callable[[], str | None] | None = None,
    timeout: float = 240,
    undo: Callable[[], None] | None = None,
    **fields: object,
) -> Struck:
    """A deploy bounded by ``timeout``, ``fault`` struck once the log says ``phase`` started
    (or shows ``event`` with ``fields``) and ``undo`` run once the deploy ended; production's
    port (or ``url``, which ``serving`` reads) probed until some version serves again (what
    restart policies bring back may come after the exit)."""
    answers = serving or service.serving
    with Prober(url or service.version_url()) as prober:
        with service.cli("deploy", timeout=timeout) as cli:
            cli.until_event(event, **(fields or {"step": phase}))
            # Struck from another thread: the CLI's output is read meanwhile.
            striking = threading.Thread(target=fault)
            striking.start()
            run = cli.finish()
            striking.join(120)
        if undo is not None:
            undo()
        until(lambda: answers() is not None, "production's port answers", timeout=60)
    dark = round(prober.longest_gap(to_end=True), 2)
    return Struck(run, prober.failures, dark, len(prober.samples))


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    require_engine()
    svc = Service(tmp_path)
    try:
        yield svc
    finally:
        svc.cleanup()
