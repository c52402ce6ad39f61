"""``init --from CONTAINER``: a commented config for a service that runs already.

Everything written is read from the running container (its inspect, its compose
file) or found by asking it (health paths, the tick endpoint); what was found and
how is returned as notes, and nothing is guessed silently. The text is validated
by loading it like any config before it is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from rolling_update._config.settings import EngineConfig, HealthConfig, load_config
from rolling_update._deploy.compose import WORKING_DIR, made_by_compose, service_entries
from rolling_update._deploy.session import open_engine, open_http
from rolling_update._engine.model import Engine, split_reference
from rolling_update._errors import ConfigError, PreflightError
from rolling_update._watch.probe import port_in_use, probe

PORT_NAMES = ("PORT", "BRAIN_PORT", "HTTP_PORT", "APP_PORT", "SERVER_PORT")
"""Env names that commonly tell a service its port, in the order they are tried."""
HEALTH_PATHS = ("/api/brain/health", "/health", "/healthz", "/api/health", "/status", "/")
"""Paths probed for a health endpoint when none is given, in this order."""
TICK_PATH = "/api/brain/tick/status"
VERSION_PATHS = ("/api/brain/hardening/status", "/version")
"""Where a version is looked for when the health answer has none."""


@dataclass
class Found:
    """What ``init`` learnt about the container, and how (the notes)."""

    name: str
    image: str
    port: int
    port_env: list[str]
    network: str
    restart: str
    env_file: str | None = None
    health_path: str = "/health"
    expect_json: dict[str, Any] = field(default_factory=dict)
    tick: bool = False
    version_path: str = ""
    version_field: str = ""
    notes: list[str] = field(default_factory=list)


def _env(raw: Mapping[str, Any]) -> dict[str, str]:
    pairs = (item.partition("=") for item in (raw.get("Config") or {}).get("Env") or [])
    return {key: value for key, _, value in pairs}


def _port(
    raw: Mapping[str, Any], env: Mapping[str, str], notes: list[str]
) -> tuple[int, list[str]]:
    names = [name for name in PORT_NAMES if env.get(name, "").isdigit()]
    if names:
        values = {env[name] for name in names}
        if len(values) == 1:
            notes.append(f"port {env[names[0]]}: from its env {', '.join(names)}")
            return int(env[names[0]]), names
    for bindings in ((raw.get("HostConfig") or {}).get("PortBindings") or {}).values():
        for binding in bindings or []:
            if str(binding.get("HostPort", "")).isdigit():
                notes.append(f"port {binding['HostPort']}: its published port")
                return int(binding["HostPort"]), []
    raise PreflightError(
        "cannot tell the container's port: no PORT-like env value and no published port "
        f"(looked for {', '.join(PORT_NAMES)})"
    )


def _compose_env_file(labels: Mapping[str, str], notes: list[str]) -> str | None:
    if not made_by_compose(labels):
        return None
    workdir = Path(labels.get(WORKING_DIR) or ".")
    entries, why = service_entries(labels)
    if why is not None:
        notes.append(f"env_file: none, the compose file is unreadable ({why})")
    for entry in entries:
        files = entry.get("env_file")
        files = [files] if isinstance(files, str) else files or []
        if files:
            found = str((workdir / str(files[0])).resolve())
            notes.append(f"env_file {found}: from the compose file's env_file")
            return found
    return None


async def _health(
    http: aiohttp.ClientSession, base: str, path: str | None, notes: list[str]
) -> tuple[str, dict[str, Any]]:
    rule = HealthConfig()
    for candidate in [path] if path else HEALTH_PATHS:
        answer = await probe(http, base + candidate, rule)
        if answer.status == 200 and answer.error is None:
            body = answer.body if isinstance(answer.body, dict) else {}
            expect = {"status": body["status"]} if isinstance(body.get("status"), str) else {}
            how = "given" if path else f"found by probing {', '.join(HEALTH_PATHS)}"
            notes.append(
                f"health {candidate}: {how}; it answered {answer.describe(120)}"
                + (f"; its body must keep status {body['status']!r}" if expect else "")
            )
            return candidate, expect
        if path:
            raise PreflightError(f"{base}{candidate} did not answer 200: {answer.describe(120)}")
    raise PreflightError(
        f"no health endpoint answered 200 at {base} (tried {', '.join(HEALTH_PATHS)}); "
        "name one with --health PATH"
    )


async def _version(
    http: aiohttp.ClientSession, base: str, found: Found, notes: list[str]
) -> tuple[str, str]:
    for path in ("", *VERSION_PATHS):
        answer = await probe(http, base + (path or found.health_path), HealthConfig())
        if isinstance(answer.body, dict) and isinstance(answer.body.get("version"), str):
            where = path or found.health_path
            notes.append(f"version: {where} answers version {answer.body['version']!r}")
            return path, "version"
    notes.append("version: none found in its answers; only the image id is checked")
    return "", ""


async def inspect_service(
    engine: Engine,
    http: aiohttp.ClientSession,
    container: str,
    *,
    host: str = "127.0.0.1",
    health_path: str | None = None,
) -> Found:
    raw = await engine.inspect_raw(container)
    if raw is None:
        raise PreflightError(f"no container named {container!r}")
    if not (raw.get("State") or {}).get("Running"):
        raise PreflightError(f"{container} is not running: init reads a service that runs")
    notes: list[str] = []
    env = _env(raw)
    port, port_env = _port(raw, env, notes)
    labels = (raw.get("Config") or {}).get("Labels") or {}
    host_config = raw.get("HostConfig") or {}
    found = Found(
        name=str(raw.get("Name", container)).lstrip("/"),
        image=str((raw.get("Config") or {}).get("Image", "")),
        port=port,
        port_env=port_env or ["PORT"],
        network=str(host_config.get("NetworkMode") or "default"),
        restart=str((host_config.get("RestartPolicy") or {}).get("Name") or "no"),
        notes=notes,
    )
    found.env_file = _compose_env_file(labels, notes)
    base = f"http://{host}:{port}"
    found.health_path, found.expect_json = await _health(http, base, health_path, notes)
    found.version_path, found.version_field = await _version(http, base, found, notes)
    tick = await probe(http, base + TICK_PATH, HealthConfig())
    found.tick = isinstance(tick.body, dict) and isinstance(tick.body.get("tick_running"), bool)
    notes.append(
        f"tick: {TICK_PATH} answers tick_running, the switch waits for its boundary"
        if found.tick
        else f"tick: off ({TICK_PATH} does not answer tick_running)"
    )
    return found


def _q(value: str) -> str:
    return json.dumps(value)


def render(found: Found, *, green_port: int, version_file: str, context: str | None) -> str:
    """The config text, commented like config.example.toml."""
    repo, _ = split_reference(found.image)
    lines = [
        f"# rolling-update config for {found.name}, written by `rolling-update init --from "
        f"{found.name}`.",
        "# Every value was read from the running container or found by asking it; the",
        "# comments say which. config.example.toml documents every key.",
        "",
        "[service]",
        f"name = {_q(found.name):<32} # the running container (blue)",
        f"green_name = {_q(found.name + '-green'):<26} # the container that warms up beside it",
        f"port = {found.port:<32} # where it serves",
        f"green_port = {green_port:<26} # free now: green's port while it warms up",
        f"port_env = {json.dumps(found.port_env):<28} # env that tells the app its port",
        f"network = {_q(found.network):<29} # its network mode",
        f"restart = {_q(found.restart):<29} # its restart policy (the new container keeps it)",
    ]
    if found.env_file:
        lines.append(f"env_file = {_q(found.env_file):<28} # from its compose file")
    lines += [
        "",
        "[image]",
        f"name = {_q(repo + ':{version}'):<32} # its image, one tag per version",
        f"version_file = {_q(version_file):<24} # JSON file holding the version to deploy",
        f"tags = {json.dumps(['latest']):<32} # also tagged, right before the switch",
        "",
        "[build]",
    ]
    if context:
        lines += [
            f"enabled = {'true':<29} # build the image from the context",
            f"context = {_q(context):<29} # the build context",
        ]
    else:
        lines.append(f"enabled = {'false':<29} # the image for each version must exist already")
    health = (
        "{ " + ", ".join(f"{k} = {_q(str(v))}" for k, v in found.expect_json.items()) + " }"
        if found.expect_json
        else "{}"
    )
    lines += [
        "",
        "[health]",
        f"path = {_q(found.health_path):<32} # answered 200 when init asked",
        f"expect_json = {health:<25} # what its body said then",
        f"version_path = {_q(found.version_path):<24} # where the version is (empty: in health)",
        f"version_field = {_q(found.version_field):<23} # "
        + (
            "green and production must answer the new one"
            if found.version_field
            else "none found: only the image id is checked"
        ),
        "",
        "[tick]",
        f"enabled = {'true' if found.tick else 'false':<29} # "
        + ("it answers tick_running: wait for blue's tick boundary" if found.tick else "no tick"),
        "",
    ]
    return "\n".join(lines)


async def free_green_port(host: str, port: int) -> int:
    """The first port after ``port`` nothing listens on (when init runs)."""
    for candidate in range(port + 1, min(port + 100, 65536)):
        if not await port_in_use(host, candidate):
            return candidate
    raise ConfigError(f"no free port between {port + 1} and {port + 99} for green")


async def survey(
    container: str,
    *,
    engine: Engine | None = None,
    health_path: str | None = None,
    http: aiohttp.ClientSession | None = None,
) -> tuple[Found, int]:
    """What the running ``container`` says of itself, and a free port for green."""
    async with open_engine(engine, EngineConfig()) as docker, open_http(http) as http:
        found = await inspect_service(docker, http, container, health_path=health_path)
        green_port = await free_green_port("127.0.0.1", found.port)
    found.notes.append(f"green_port {green_port}: the first free port after {found.port}")
    return found, green_port


def refuse_existing(output: Path, force: bool) -> None:
    if output.exists() and not force:
        raise PreflightError(f"{output} exists; --force replaces it")


def write_config(
    found: Found,
    green_port: int,
    output: Path,
    *,
    context: str | None = None,
    version_file: str | None = None,
    force: bool = False,
) -> None:
    """Write ``output`` from what :func:`survey` found, loaded as a config before it
    replaces anything; an existing ``output`` is refused (nothing written) unless ``force``."""
    refuse_existing(output, force)
    chosen = version_file or (f"{context}/package.json" if context else "package.json")
    found.notes.append(f"version_file {chosen}: " + ("given" if version_file else "assumed"))
    text = render(found, green_port=green_port, version_file=chosen, context=context)
    draft = output.with_name(f".{output.name}.draft")
    draft.write_text(text)
    try:
        load_config(draft, environ={})
    except ConfigError:
        draft.unlink()
        raise
    draft.replace(output)
