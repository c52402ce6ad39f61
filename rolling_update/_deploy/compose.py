"""A blue made by docker compose: what its compose project says, read from its labels.

Compose keeps its own rules, and a deploy that ignores them is undone later:

- ``environment:`` wins over ``env_file:``. The container only carries the merged
  result, so which keys ``environment:`` set is read from the compose file the
  labels name (:func:`environment_keys`).
- ``docker compose up -d`` recreates a container whose ``config-hash`` label
  differs from the hash it computes now, and that hash covers the id of the image
  the file names (``cecelia-brain:${BRAIN_VERSION:-latest}``). The new production
  container gets the hash compose itself computes once ``image.tags`` point at the
  new image (:func:`config_hash`), so a later ``up -d`` finds it up to date.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import yaml

PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
WORKING_DIR = "com.docker.compose.project.working_dir"
CONFIG_FILES = "com.docker.compose.project.config_files"
ENVIRONMENT_FILE = "com.docker.compose.project.environment_file"
CONFIG_HASH = "com.docker.compose.config-hash"

# Compose reads files and the engine; it answers in a second or two.
_COMPOSE_LIMIT = 30.0


def made_by_compose(labels: Mapping[str, str]) -> bool:
    return bool(labels.get(PROJECT) and labels.get(SERVICE))


def _files(labels: Mapping[str, str]) -> list[Path]:
    workdir = Path(labels.get(WORKING_DIR) or ".")
    return [workdir / name for name in filter(None, labels.get(CONFIG_FILES, "").split(","))]


def service_entries(labels: Mapping[str, str]) -> tuple[list[dict[str, Any]], str | None]:
    """The container's service as each compose file its labels name defines it (in the
    files' order, later ones overriding), and why they cannot be read, if so."""
    files = _files(labels)
    if not files:
        return [], "its labels name no compose file"
    entries: list[dict[str, Any]] = []
    for path in files:
        try:
            document: Any = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            return [], f"cannot read {path}: {exc}"
        services = document.get("services") if isinstance(document, dict) else None
        entry = services.get(labels[SERVICE]) if isinstance(services, dict) else None
        if isinstance(entry, dict):
            entries.append(entry)
    return entries, None


def environment_keys(labels: Mapping[str, str]) -> tuple[frozenset[str], str | None]:
    """The env keys compose's ``environment:`` sets for blue's service, and why none are
    known when the compose file cannot be read (``None`` when it could)."""
    if not made_by_compose(labels):
        return frozenset(), None
    entries, why = service_entries(labels)
    if why is not None:
        return frozenset(), why
    keys: set[str] = set()
    for entry in entries:
        environment = entry.get("environment")
        if isinstance(environment, dict):
            keys.update(str(key) for key in environment)
        elif isinstance(environment, list):
            keys.update(str(item).partition("=")[0] for item in environment)
    return frozenset(keys), None


def _cli() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    return [docker, "compose"] if docker else None


async def config_hash(
    labels: Mapping[str, str], environ: Mapping[str, str]
) -> tuple[str | None, str | None]:
    """The config hash compose computes now for blue's service, or why it is unknown."""
    cli = _cli()
    if cli is None:
        return None, "no docker-compose or docker compose command"
    argv = [*cli, "-p", labels[PROJECT]]
    workdir = labels.get(WORKING_DIR)
    if workdir:
        argv += ["--project-directory", workdir]
    for path in _files(labels):
        argv += ["-f", str(path)]
    if labels.get(ENVIRONMENT_FILE):
        argv += ["--env-file", labels[ENVIRONMENT_FILE]]
    argv += ["config", f"--hash={labels[SERVICE]}"]
    try:
        with anyio.fail_after(_COMPOSE_LIMIT):
            result = await anyio.run_process(
                argv, env=dict(environ), cwd=workdir or None, check=False
            )
    except TimeoutError:
        return None, f"compose did not answer within {_COMPOSE_LIMIT:g}s"
    except OSError as exc:
        return None, f"cannot run {cli[0]}: {exc.strerror}"
    if result.returncode != 0:
        return None, result.stderr.decode(errors="replace").strip()[-300:]
    for line in result.stdout.decode(errors="replace").splitlines():
        name, _, value = line.strip().partition(" ")
        if name == labels[SERVICE] and value:
            return value.strip(), None
    return None, "compose printed no hash for the service"
