"""``demo``: the main job on a small service of the tool's own, on any Docker engine.

It starts blue (1.0.0 of ``demo/app.py``: a tick loop and a health body shaped
like the reference service's), puts a load on it (a new connection every 20 ms,
as a client: through the handoff's redirect), deploys 2.0.0, then a 3.0.0 that
degrades once it serves production's port and is rolled back, and counts the
requests served and failed all along. It removes everything it made (containers,
images, state), also when interrupted. Its image is built from a base the engine
has (any image with python3, ``--base``), so no registry is needed.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import structlog

from rolling_update._config.settings import Config, parse_config
from rolling_update._deploy.deploy import deploy
from rolling_update._deploy.session import http_session
from rolling_update._engine.docker import DockerEngine
from rolling_update._engine.model import LABEL_SERVICE, ContainerSpec, Engine
from rolling_update._errors import PreflightError, RollingUpdateError
from rolling_update._observe.progress import Wait, waiting
from rolling_update._state.mark import marker_name
from rolling_update._watch.health import LastProbe, poll_until_healthy
from rolling_update._watch.tasks import task_group

APP = Path(__file__).resolve().parent.parent / "demo" / "app.py"
LABEL_DEMO = "io.rolling-update.demo"
# Names engines commonly hold an image with python3 under, tried in this order.
_LIKELY_BASES = ("rolling-update-test-base", "python", "debian", "ubuntu")
_CLEANUP_LIMIT = 60.0
_DOCKERFILE = """\
ARG BASE
FROM ${BASE}
COPY app.py package.json /app/
CMD ["python3", "/app/app.py"]
"""


@dataclass
class Load:
    """What the demo's client saw: answers, and requests that got none."""

    served: int = 0
    failed: int = 0


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


async def _has_python(engine: Engine, image: str) -> bool:
    spec = ContainerSpec(
        name=f"rolling-update-demo-probe-{uuid.uuid4().hex[:6]}",
        image=image,
        command=["python3", "-c", "pass"],
        restart="no",
        network="none",
    )
    try:
        code, _ = await engine.run_once(spec, limit=20)
    except RollingUpdateError:
        return False
    return code == 0


async def pick_base(engine: Engine, wanted: str | None) -> str:
    """``wanted``, or an image the engine has with python3, else python:3.12-slim pulled."""
    if wanted:
        if not await engine.image_exists(wanted):
            await engine.pull_image(wanted, auth="")
        return wanted
    images = await engine.list_images({})
    tags = [tag for image in images for tag in image.tags if not tag.startswith("<none>")]
    for likely in _LIKELY_BASES:
        for tag in tags:
            if tag.rpartition(":")[0].endswith(likely) and await _has_python(engine, tag):
                return tag
    try:
        await engine.pull_image("python:3.12-slim", auth="")
    except RollingUpdateError as exc:
        raise PreflightError(
            "the demo needs an image with python3 and the engine has none it could find "
            f"(nor could it pull python:3.12-slim: {exc}); name one with --base IMAGE"
        ) from None
    return "python:3.12-slim"


def _context(root: Path, version: str, *, broken: bool = False) -> Path:
    app = root / "app"
    app.mkdir(exist_ok=True)
    shutil.copy(APP, app / "app.py")
    (app / "Dockerfile").write_text(_DOCKERFILE)
    (app / "package.json").write_text(json.dumps({"version": version, "broken": broken}))
    return app


def demo_config(root: Path, name: str, port: int, green_port: int, base: str) -> Config:
    data: dict[str, Any] = {
        "service": {
            "name": name,
            "green_name": f"{name}-green",
            "port": port,
            "green_port": green_port,
            "stop_timeout": 2,
            "restart": "no",
        },
        "image": {"name": f"{name}:{{version}}", "version_file": "app/package.json"},
        "build": {"context": "app", "args": {"BASE": base}, "keep": 0, "timeout": 120},
        "env": {"DEMO_PRODUCTION_PORT": str(port)},
        "health": {
            "path": "/api/brain/health",
            "expect_json": {"status": "healthy"},
            "version_path": "/api/brain/hardening/status",
            "interval": 0.2,
            "attempts": 100,
        },
        "tick": {"interval": 0.1, "settle": 0.2, "guard": 0.5, "timeout": 20},
        "verify": {"timeout": 5, "soak": 2},
        "state": {"dir": "state"},
    }
    return parse_config(data, base_dir=root, environ={}, source="demo")


async def _load(url: str, load: Load, *, interval: float = 0.02) -> None:
    """A client's view of production: a new connection every ``interval``, until cancelled."""
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=3)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as client:
        with waiting("the demo's client", None) as shown:
            await _requests(client, url, load, shown, interval)


async def _requests(
    client: aiohttp.ClientSession, url: str, load: Load, shown: Wait, interval: float
) -> None:
    log = structlog.get_logger()
    last = time.monotonic()
    while True:  # cancelled by the demo's task group
        try:
            async with client.get(url) as response:
                await response.read()
            load.served += 1
        except (aiohttp.ClientError, OSError, TimeoutError):
            load.failed += 1
        shown.detail = f"requests served {load.served}, failed {load.failed}"
        if time.monotonic() - last >= 2:
            last = time.monotonic()
            log.info("demo.load", served=load.served, failed=load.failed)
        await anyio.sleep(interval)


async def _cleanup(engine: Engine, name: str) -> None:
    with anyio.move_on_after(_CLEANUP_LIMIT, shield=True):
        for label in ({LABEL_DEMO: name}, {LABEL_SERVICE: name}):
            for container_id in await engine.list_ids(label):
                await engine.stop(container_id, grace=1)
                await engine.remove(container_id)
        for image in await engine.list_images({}, reference=name):
            for tag in image.tags:
                await engine.remove_image(tag)
        await engine.remove_marker(marker_name(name))


async def run_demo(base: str | None = None, environ: Mapping[str, str] | None = None) -> Load:
    """The whole demo; returns what its client saw. Raises when a deploy did not end as
    the demo expects (2.0.0 deployed, 3.0.0 rolled back)."""
    log = structlog.get_logger()
    name = f"rolling-update-demo-{uuid.uuid4().hex[:6]}"
    port, green_port = _free_ports(2)
    load = Load()
    async with DockerEngine() as engine, http_session() as http:
        chosen = await pick_base(engine, base)
        log.info("demo.base", image=chosen)
        root = Path(await anyio.to_thread.run_sync(lambda: tempfile.mkdtemp(prefix="ru-demo-")))
        try:
            cfg = demo_config(root, name, port, green_port, chosen)
            app = _context(root, "1.0.0")
            await engine.build_image(
                app,
                dockerfile="Dockerfile",
                tag=f"{name}:1.0.0",
                args={"BASE": chosen},
                on_line=lambda line: None,
            )
            blue = await engine.create(
                ContainerSpec(
                    name=name,
                    image=f"{name}:1.0.0",
                    env={"PORT": str(port), "DEMO_PRODUCTION_PORT": str(port)},
                    restart="no",
                    labels={LABEL_DEMO: name},
                    stop_timeout=2,
                )
            )
            await engine.start(blue)
            url = f"http://127.0.0.1:{port}/api/brain/health"
            with anyio.fail_after(cfg.verify.timeout):
                await poll_until_healthy(
                    http, url, cfg.health, interval=0.05, expect_version=None, last=LastProbe()
                )
            log.info("demo.blue", container=name, version="1.0.0", port=port)
            _context(root, "2.0.0")
            async with task_group() as tg:
                tg.start_soon(_load, url, load)
                await deploy(cfg, engine=engine, environ=environ or {})
                log.info("demo.deployed", version="2.0.0", served=load.served, failed=load.failed)
                _context(root, "3.0.0", broken=True)
                try:
                    await deploy(cfg, engine=engine, environ=environ or {})
                except RollingUpdateError as exc:
                    log.info("demo.rolled_back", version="3.0.0", why=str(exc))
                else:
                    raise RollingUpdateError("the broken 3.0.0 was not rolled back")
                tg.cancel_scope.cancel()
        finally:
            await _cleanup(engine, name)
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(root, ignore_errors=True))
    log.info("demo.done", served=load.served, failed=load.failed, left_behind="nothing")
    return load
