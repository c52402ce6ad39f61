"""Helpers for tests that deploy the real Cecelia Brain (../shared/realbrain).

``setup.sh`` there (run by scripts/test-env.sh) builds the images
``cecelia-brain-real:1.98.0`` and ``:1.98.1``, their build contexts, a
PostgreSQL 15 cluster on 127.0.0.1:5433 and the env file. Every test here
deploys with the repository's config.example.toml, changing only names, ports
and paths. The database is shared by all of them: the fixture resets it
before and after each test, and removes every container and image a test made.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import DOCKER, ROOT, Sampler, Service, docker, get_json, json_type, swapped

REALBRAIN = Path(os.environ.get("RU_REALBRAIN") or ROOT.parent / "shared" / "realbrain")
WORK = Path(os.environ.get("REALBRAIN_WORK", "/tmp/realbrain"))
ENV_FILE = WORK / "brain.env"
REPO = "cecelia-brain-real"
BASE = "realbrain-base:bookworm"
OLD, NEW = "1.98.0", "1.98.1"
EXAMPLE = ROOT / "config.example.toml"
COMPOSE_FILE = REALBRAIN / "upstream" / "docker-compose.yml"
DOCKER_COMPOSE = os.environ.get("DOCKER_COMPOSE", "/usr/bin/docker-compose")
# The schema the 1.98.x builds expect (src/selfcheck.js EXPECTED_SCHEMA_VERSION).
SCHEMA = "076"
# What a test's migration creates (tests may add one), dropped by every reset.
TEST_TABLE = "rbtest_deploy_check"
PG = {"PGPASSWORD": "cecelia"}
PSQL = [
    "psql",
    "-h",
    "127.0.0.1",
    "-p",
    "5433",
    "-U",
    "cecelia",
    "cecelia",
    "-v",
    "ON_ERROR_STOP=1",
]


def context(version: str = NEW) -> Path:
    """The build context setup.sh made for ``version`` (node_modules installed)."""
    return WORK / "build" / version / "brain"


def psql(sql: str) -> str:
    result = subprocess.run(
        [*PSQL, "-Atc", sql],
        capture_output=True,
        text=True,
        env={**os.environ, **PG},
        timeout=30,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql {sql!r}: {result.stderr.strip()}")
    return result.stdout.strip()


def db_tick_enabled() -> bool | None:
    """The shared database's ``working_memory.tick_enabled`` (what every Brain's ``enabled`` is)."""
    value = psql("SELECT value_json->>'enabled' FROM working_memory WHERE key = 'tick_enabled'")
    return {"true": True, "false": False}.get(value)


def db_schema() -> str:
    return psql("SELECT MAX(version) FROM schema_version")


def reset_db() -> None:
    """Tick enabled, schema back at 076, no test table: the state every test starts from."""
    if psql("SELECT to_regclass('working_memory') IS NULL") == "t":
        # A new cluster (setup.sh makes an empty one): the Brain's own migrations, run the
        # way a deploy runs them, make the schema the tests reset to.
        docker(
            *("run", "--rm", "--network", "host", "--env-file", str(ENV_FILE)),
            *(f"{REPO}:{OLD}", "node", "src/migrate.js"),
            timeout=120,
        )
    psql(
        "INSERT INTO working_memory (key, value_json, updated_at) "
        """VALUES ('tick_enabled', '{"enabled": true}', NOW()) """
        "ON CONFLICT (key) DO UPDATE SET value_json = EXCLUDED.value_json, updated_at = NOW(); "
        f"DELETE FROM schema_version WHERE version > '{SCHEMA}'; "
        f"DROP TABLE IF EXISTS {TEST_TABLE};"
    )
    assert db_tick_enabled() is True and db_schema() == SCHEMA


def image_id(ref: str) -> str | None:
    found = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return found or None


def image_labels(ref: str) -> dict[str, str]:
    out = docker("image", "inspect", "--format", "{{json .Config.Labels}}", ref, check=False)
    labels = json.loads(out) if out.startswith("{") else None
    return labels if isinstance(labels, dict) else {}


@functools.cache
def setup_images() -> dict[str, str]:
    """The ids of setup.sh's images, taken before any test retags one (a deploy builds 1.98.1)."""
    ids: dict[str, str] = {}
    for version in (OLD, NEW):
        ref = f"{REPO}:{version}"
        found = image_id(ref)
        if found is None:
            pytest.fail(f"{ref} missing: run `bash scripts/test-env.sh` ({REALBRAIN}/setup.sh)")
        if "io.rolling-update.service" in image_labels(ref):
            pytest.fail(f"{ref} is a deploy's build, not setup.sh's: re-run {REALBRAIN}/setup.sh")
        ids[version] = found
    return ids


def require_realbrain() -> None:
    """Fail (never skip) when setup.sh has not made what these tests deploy."""
    missing = [
        str(p) for p in (ENV_FILE, context(OLD), context(NEW), COMPOSE_FILE) if not p.exists()
    ]
    if image_id(BASE) is None:
        missing.append(BASE)
    try:
        reset_db()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        missing.append(f"the database on 127.0.0.1:5433 ({exc})")
    if missing:
        pytest.fail(
            f"the real Brain is not set up ({', '.join(missing)}): run `bash scripts/test-env.sh`"
        )
    setup_images()


class Poller(Sampler):
    """GETs a JSON endpoint every ``interval`` seconds and keeps each answer (None: none)."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        super().__init__(url, interval)
        self.answers: list[tuple[float, dict[str, Any] | None]] = []

    def sample(self) -> None:
        body = get_json(self.url, timeout=3.0)
        self.answers.append((time.monotonic(), body if isinstance(body, dict) else None))

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [body for _, body in self.answers if body is not None]


FAIL_AFTER_SWITCH = """#!/bin/sh
# A release that fails after the switch: on production's port it serves for a few
# seconds, then exits 1; on any other port (green's) it is the Brain as built.
[ "${PORT:-}" = "@PORT@" ] || exec node server.js
node server.js &
brain=$!
until curl -fsS -o /dev/null "http://127.0.0.1:$PORT/api/brain/health"; do
  kill -0 "$brain" 2>/dev/null || exit 1
  sleep 0.1
done
sleep @AFTER@
echo "failing on production's port $PORT, as this release was built to" >&2
kill -TERM "$brain"
exit 1
"""


@dataclass
class RealBrain(Service):
    """One test's real Brain: names, free ports, its own env file and state, and cleanup."""

    made_images: list[str] = field(default_factory=list)
    compose_project: str | None = None

    @property
    def name(self) -> str:
        return f"rbtest-{self.uid}"

    @property
    def env_file(self) -> Path:
        path = self.workdir / ".env.docker"
        if not path.exists():
            shutil.copyfile(ENV_FILE, path)
        return path

    def tick(self, port: int | None = None) -> dict[str, Any]:
        body = get_json(self.url(port, "/api/brain/tick/status"), timeout=3.0)
        return body if isinstance(body, dict) else {}

    def health(self) -> dict[str, Any]:
        body = get_json(self.url(), timeout=3.0)
        return body if isinstance(body, dict) else {}

    def settled_health(self, timeout: float = 60) -> str:
        """Health's status once the Brain has finished starting: it listens before
        ``initTickLoop`` starts the loop (server.js), and answers ``degraded`` until then
        (routes.js, ``/health``: ``loop_running`` and no open breaker)."""
        deadline = time.monotonic() + timeout
        while self.tick().get("loop_running") is not True:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}'s tick loop did not start: {self.tick()}")
            time.sleep(0.1)
        return str(self.health()["status"])

    def reference_config(self, build: Path, version_file: Path | None = None) -> Path:
        """config.example.toml with this test's names, ports and paths, deploying ``build``."""
        swaps = [
            (r'"cecelia-node-brain-green"', f'"{self.green}"'),
            (r'"cecelia-node-brain"', f'"{self.name}"'),
            (r"(?m)^port = 5221", f"port = {self.port}"),
            (r"(?m)^green_port = 5222", f"green_port = {self.green_port}"),
            (r'(?m)^env_file = "\.env\.docker"', f'env_file = "{self.env_file}"'),
            (r'"cecelia-brain:\{version\}"', f'"{REPO}:{{version}}"'),
            (
                r'(?m)^version_file = "brain/package\.json"',
                f'version_file = "{version_file or build / "package.json"}"',
            ),
            (r'(?m)^context = "brain"', f'context = "{build}"'),
            (r'(?m)^dockerfile = "Dockerfile"', 'dockerfile = "Dockerfile.realbrain"'),
            (r"(?m)^args = \{\}", f'args = {{ BASE = "{BASE}" }}'),
            # A path: `docker` on this machine's PATH is a newer client without buildx (the
            # tool would fall back to the engine's classic builder, 25 s per build here).
            (r'(?m)^docker_cli = "docker"', f'docker_cli = "{DOCKER}"'),
            (r'(?m)^# dir = "/var/lib/rolling-update"', f'dir = "{self.workdir / "state"}"'),
        ]
        text = swapped(EXAMPLE.read_text(), swaps, "config.example.toml")
        path = self.workdir / "rolling-update.toml"
        path.write_text(text)
        return path

    def start_blue(  # type: ignore[override]
        self, version: str = OLD, *, extra: Sequence[str] = ()
    ) -> str:
        """Blue as production runs it (upstream compose's flags, with ``docker run``)."""
        run = [
            "run",
            "-d",
            "--name",
            self.name,
            "--network",
            "host",
            "--pid",
            "host",
            "--restart",
            "unless-stopped",
            "--read-only",
            "--tmpfs",
            "/tmp:size=100M",
            "--log-opt",
            "max-size=10m",
            "--log-opt",
            "max-file=3",
            "--env-file",
            str(self.env_file),
            "-e",
            f"PORT={self.port}",
            "-e",
            f"BRAIN_PORT={self.port}",
            *extra,
            f"{REPO}:{version}",
        ]
        cid = docker(*run)
        self.wait_serving(version)
        return cid

    def logs(self, name: str | None = None) -> str:
        """A container's own output, stdout and stderr."""
        result = subprocess.run(
            [DOCKER, "logs", name or self.name],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return result.stdout + result.stderr

    def wait_serving(self, version: str, timeout: float = 60) -> None:
        """Until health answers 200 on production's port and ``version`` is the one there."""
        deadline = time.monotonic() + timeout
        while self.serving() != version or get_json(self.url(), timeout=2.0) is None:
            state = docker("inspect", "-f", "{{.State.Status}}", self.name, check=False)
            if time.monotonic() > deadline or state in ("exited", "dead"):
                logs = docker("logs", "--tail", "30", self.name, check=False)
                raise RuntimeError(f"{self.name} ({state}) does not serve {version}: {logs}")
            time.sleep(0.1)

    def derived(
        self,
        version: str,
        *,
        fail_on_port: int | None = None,
        after: float = 2.0,
        migration: str | None = None,
    ) -> Path:
        """A build context for a release made from 1.98.1's image, with its own package.json.

        ``fail_on_port``: it exits 1 ``after`` seconds once it serves there (fine elsewhere).
        ``migration``: it brings migrations/077_<TEST_TABLE>.sql with this SQL, and expects
        schema 077 (as a real release with a migration does).
        """
        ctx = self.workdir / f"release-{version}"
        ctx.mkdir()
        package = json.loads((context(NEW) / "package.json").read_text())
        package["version"] = version
        (ctx / "package.json").write_text(json.dumps(package, indent=2) + "\n")
        lines = [f"ARG BASE={BASE}", f"FROM {REPO}:{NEW}", "COPY package.json /app/package.json"]
        if migration is not None:
            sql = f"077_{TEST_TABLE}.sql"
            (ctx / sql).write_text(migration)
            check = (context(NEW) / "src" / "selfcheck.js").read_text()
            check, count = re.subn(
                r"EXPECTED_SCHEMA_VERSION = '076'", "EXPECTED_SCHEMA_VERSION = '077'", check
            )
            assert count == 1, "src/selfcheck.js no longer sets EXPECTED_SCHEMA_VERSION '076'"
            (ctx / "selfcheck.js").write_text(check)
            lines += [
                f"COPY {sql} /app/migrations/{sql}",
                "COPY selfcheck.js /app/src/selfcheck.js",
            ]
        if fail_on_port is not None:
            script = ctx / "fail-after-switch.sh"
            script.write_text(
                FAIL_AFTER_SWITCH.replace("@PORT@", str(fail_on_port)).replace(
                    "@AFTER@", str(after)
                )
            )
            script.chmod(0o755)
            lines += [
                "COPY fail-after-switch.sh /app/fail-after-switch.sh",
                'CMD ["/app/fail-after-switch.sh"]',
            ]
        (ctx / "Dockerfile.realbrain").write_text("\n".join(lines) + "\n")
        self.made_images.append(f"{REPO}:{version}")
        return ctx

    # ---------------------------------------------------------------- compose
    def compose_file(self) -> Path:
        """Upstream's compose file, its node-brain service adapted to this machine and test."""
        text = COMPOSE_FILE.read_text()
        home = self.workdir / "home"
        swaps = [
            (r"(?s)\n  frontend:.*", "\n"),
            (
                r"image: cecelia-brain:\$\{BRAIN_VERSION:-latest\}",
                f"image: {REPO}:${{BRAIN_VERSION:-latest}}",
            ),
            (r"container_name: cecelia-node-brain", f"container_name: {self.name}"),
            # Bind mounts: the same layout, under this test's directory.
            (r"(?m)^(\s+- )/home/xx/", rf"\g<1>{home}/xx/"),
            (r"(?m)^(\s+- )\.env\.docker$", rf"\g<1>{self.env_file}"),
            (r"BRAIN_PORT=5221", f"BRAIN_PORT={self.port}"),
            # The healthcheck keeps naming production's port, as upstream's does.
            (r"http://localhost:5221/", f"http://localhost:{self.port}/"),
        ]
        text = swapped(text, swaps, str(COMPOSE_FILE))
        for source in re.findall(rf"- ({re.escape(str(home))}/[^:]+):", text):
            path = Path(source)
            if path.suffix in (".md", ".json"):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n" if path.suffix == ".json" else "# heartbeat\n")
            else:
                path.mkdir(parents=True, exist_ok=True)
        project = self.workdir / "compose"
        project.mkdir(exist_ok=True)
        path = project / "docker-compose.yml"
        path.write_text(text)
        self.compose_project = f"rbtest{self.uid}"
        return path

    def compose(self, *args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        assert self.compose_project is not None
        return subprocess.run(
            [
                DOCKER_COMPOSE,
                "-p",
                self.compose_project,
                "-f",
                str(self.workdir / "compose" / "docker-compose.yml"),
                *args,
            ],
            capture_output=True,
            text=True,
            env={**{k: v for k, v in os.environ.items() if k != "BRAIN_VERSION"}, **env},
            cwd=self.workdir / "compose",
            timeout=120,
            check=False,
        )

    # ---------------------------------------------------------------- cleanup
    def cleanup(self) -> None:
        if self.compose_project is not None:
            self.compose("down", "-t", "1", env={})
        super().cleanup()
        # The tool's builds of this service (1.98.1 retagged, derived releases), the
        # derived tags, and the tags it sets (image.tags = ["latest"]).
        built = docker(
            "images", "-q", "--filter", f"label=io.rolling-update.service={self.name}"
        ).split()
        for ref in [*self.made_images, f"{REPO}:latest"]:
            docker("rmi", ref, check=False)
        for version, original in setup_images().items():
            if image_id(f"{REPO}:{version}") != original:
                docker("tag", original, f"{REPO}:{version}")
        if built:
            docker("rmi", "-f", *sorted(set(built)), check=False)


def shape(body: Mapping[str, Any], nested: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Top-level keys with their JSON types; dicts one level down where ``nested`` has keys."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        model = (nested or {}).get(key)
        if isinstance(value, dict) and isinstance(model, dict) and model:
            out[key] = {k: json_type(v) for k, v in value.items()}
        else:
            out[key] = json_type(value)
    return out


def call(port: int, method: str, path: str) -> tuple[int, dict[str, Any] | None]:
    """One HTTP call to a local service: its status and JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=b"{}" if method == "POST" else None,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
