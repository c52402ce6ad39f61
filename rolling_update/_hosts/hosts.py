"""Several Docker hosts: each host's own config, and its engine over unix, tcp+TLS or SSH.

A host is reached through the engine's own API and transports, never an
agent of ours: ``unix://`` and ``tcp://`` (TLS with DOCKER_CERT_PATH-style
client certificates) through aiodocker, and ``ssh://`` by forwarding the
remote engine socket to a local one over SSH (asyncssh, which reads the
user's ``~/.ssh/config``, ``known_hosts`` and agent as OpenSSH does). Probes
reach the service directly, or (``probe = "ssh"``) through the same SSH
connection: each port is forwarded from a loopback address of its own here,
so that the probe URLs keep the service's port numbers.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import structlog

from rolling_update._config.settings import Config, HostConfig
from rolling_update._engine.docker import DockerEngine
from rolling_update._engine.model import Engine
from rolling_update._errors import ConfigError, EngineUnavailable
from rolling_update._handoff.nft import EngineFirewall, Firewall, LocalFirewall
from rolling_update._watch.probe import unprobeable_ports

LOCAL = HostConfig(name="local")
"""The host of a config without ``[[hosts]]``: the local engine, as DOCKER_HOST says."""

# Loopback addresses the SSH probe forwards listen on: 127.77.0.<n>, one per host.
_FORWARD_NET = "127.77.0."


def hosts_of(cfg: Config) -> list[HostConfig]:
    return list(cfg.hosts) or [LOCAL]


def pick(cfg: Config, name: str | None) -> list[HostConfig]:
    """All hosts, or the one named (``--host``)."""
    hosts = hosts_of(cfg)
    if name is None:
        return hosts
    found = [h for h in hosts if h.name == name]
    if not found:
        known = ", ".join(h.name for h in hosts)
        raise ConfigError(f"no host named {name!r}; the hosts are: {known}", key="--host")
    return found


def bypass_port(cfg: Config, host: HostConfig) -> int:
    if host.bypass_port is not None:
        return host.bypass_port
    port = host.port or cfg.service.port
    return port + 10_000 if port + 10_000 <= 65_535 else port - 10_000


def probe_address(cfg: Config, host: HostConfig) -> str:
    if host.address:
        return host.address
    if host.local:
        return cfg.service.host
    return urlsplit(host.engine).hostname or cfg.service.host


def for_host(cfg: Config, host: HostConfig, *, first: bool) -> Config:
    """``cfg`` as it applies to ``host``: its overrides, its own state directory, and
    (after the canary) no build and, unless per host, no migrations."""
    if not cfg.hosts:
        return cfg
    svc = cfg.service.model_copy(
        update={
            "host": probe_address(cfg, host),
            "port": host.port or cfg.service.port,
            "green_port": host.green_port or cfg.service.green_port,
            "name": host.container or cfg.service.name,
            "green_name": host.green_container or cfg.service.green_name,
        }
    )
    base = cfg.state.dir
    assert base is not None, "parse_config sets state.dir"
    update: dict[str, Any] = {
        "service": svc,
        "env": {**cfg.env, **host.env},
        # The lock, journal and audit log of each host: a host's deploy is recovered,
        # shown and counted on its own.
        "state": cfg.state.model_copy(update={"dir": base / "hosts" / host.name}),
    }
    textfile = cfg.metrics.textfile
    if textfile is not None:
        # One file per host: node_exporter refuses the same series from two files.
        update["metrics"] = cfg.metrics.model_copy(
            update={
                "textfile": textfile.with_name(f"{textfile.stem}-{host.name}{textfile.suffix}"),
                "labels": {**cfg.metrics.labels, "host": host.name},
            }
        )
    if not first:
        update["build"] = cfg.build.model_copy(update={"enabled": False})
        if cfg.rollout.migrate == "once":
            update["migrate"] = cfg.migrate.model_copy(update={"commands": []})
    return cfg.model_copy(update=update)


@dataclass
class Connected:
    """One host, reached: its config, engine and firewall."""

    host: HostConfig
    config: Config
    engine: Engine
    firewall: Firewall


def _tls(host: HostConfig) -> ssl.SSLContext | None:
    cert_path = host.cert_path
    if cert_path is None and os.environ.get("DOCKER_CERT_PATH"):
        cert_path = Path(os.environ["DOCKER_CERT_PATH"])
    if cert_path is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(cert_path / "ca.pem"))
        context.load_cert_chain(str(cert_path / "cert.pem"), str(cert_path / "key.pem"))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot use the TLS files: {exc}", source=str(cert_path), key=f"hosts.{host.name}"
        ) from None
    return context


async def _ssh(
    stack: AsyncExitStack, host: HostConfig, ports: list[int], index: int, limit: float
) -> tuple[str, str | None]:
    """Forward the remote engine socket (and, for SSH probes, the ports); return the
    local engine URL and the probe address, if forwarded."""
    # Imported here: only ssh:// hosts need it.
    import asyncssh

    parts = urlsplit(host.engine)
    options: dict[str, Any] = {}
    if host.ssh_config is not None:
        options["config"] = [str(host.ssh_config)]
    try:
        with anyio.fail_after(limit):
            conn = await asyncssh.connect(
                parts.hostname or "",
                port=parts.port or (),
                username=parts.username or (),
                **options,
            )
    except TimeoutError:
        raise EngineUnavailable(
            f"host {host.name}: no SSH connection to {parts.hostname} within {limit:g}s"
        ) from None
    except (OSError, asyncssh.Error) as exc:
        raise EngineUnavailable(
            f"host {host.name}: SSH to {parts.hostname} failed: {exc}"
        ) from None
    stack.callback(conn.close)
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="rolling-update-ssh-"))
    local = str(Path(folder) / "docker.sock")
    try:
        listener = await conn.forward_local_path(local, host.socket)
        stack.callback(listener.close)
        address = None
        if host.probe == "ssh":
            address = f"{_FORWARD_NET}{index + 2}"
            for port in ports:
                forward = await conn.forward_local_port(address, port, "127.0.0.1", port)
                stack.callback(forward.close)
            # A forwarded port always accepts here, whatever listens there.
            unprobeable_ports.add(address)
    except (OSError, asyncssh.Error) as exc:
        raise EngineUnavailable(f"host {host.name}: SSH forwarding failed: {exc}") from None
    return f"unix://{local}", address


@asynccontextmanager
async def connect(
    cfg: Config, host: HostConfig, *, image: str = "", engine: Engine | None = None
) -> AsyncIterator[Connected]:
    """Reach ``host``'s engine (and, for SSH probes, its ports); closed on exit.

    ``image``: what the remote handoff's helper runs when no container of the
    service is there to lend its image (see :func:`_settle_helper`). ``engine``:
    the host's engine, already open (say a :class:`~rolling_update.testing.FakeEngine`),
    used instead of reaching the host's ``engine`` address (nothing is forwarded then,
    and it is left open); the firewall is chosen from that address as ever.
    """
    log = structlog.get_logger()
    limit = cfg.rollout.connect_timeout
    index = hosts_of(cfg).index(host)
    host_cfg = for_host(cfg, host, first=index == 0)
    bypass = bypass_port(cfg, host)
    async with AsyncExitStack() as stack:
        if engine is None:
            engine, host_cfg = await _reach(stack, cfg, host, host_cfg, bypass, index)
        else:
            with anyio.fail_after(limit):
                await engine.ping()
        firewall: Firewall = (
            LocalFirewall()
            if host.local
            else EngineFirewall(
                engine,
                host.helper_image or "",
                bypass_port=bypass,
                own_nft=host.helper_image is not None,
            )
        )
        if cfg.hosts:
            log.info(
                "host.connected", host=host.name, engine=host.engine, probe=host_cfg.service.host
            )
        connected = Connected(host=host, config=host_cfg, engine=engine, firewall=firewall)
        await _settle_helper(connected, image)
        yield connected


async def _reach(
    stack: AsyncExitStack,
    cfg: Config,
    host: HostConfig,
    host_cfg: Config,
    bypass: int,
    index: int,
) -> tuple[Engine, Config]:
    """A :class:`DockerEngine` at ``host``'s address (over SSH, TLS or a socket), closed with
    ``stack``; and ``host_cfg`` with the probe address SSH forwarding gave, if any."""
    limit = cfg.rollout.connect_timeout
    url: str | None = host.engine
    ssl_context = None
    if not cfg.hosts:
        url = None  # DOCKER_HOST, or the default socket, as before hosts existed
    elif host.engine.startswith("ssh://"):
        svc = host_cfg.service
        ports = [svc.port, svc.green_port, bypass]
        url, address = await _ssh(stack, host, ports, index, limit)
        if address is not None:
            svc = svc.model_copy(update={"host": address})
            host_cfg = host_cfg.model_copy(update={"service": svc})
    elif host.engine.startswith("tcp://"):
        ssl_context = _tls(host)
    with anyio.fail_after(limit):
        engine = await stack.enter_async_context(
            DockerEngine(url, ssl_context=ssl_context, limits=cfg.engine)
        )
    return engine, host_cfg


async def _settle_helper(connected: Connected, image: str) -> None:
    """The remote handoff's helpers run blue's image unless one is configured (or, blue gone,
    the image of any container of the service, else ``image``)."""
    firewall = connected.firewall
    if isinstance(firewall, EngineFirewall) and not connected.host.helper_image:
        svc = connected.config.service
        for name in (svc.name, svc.old_name, svc.green_name):
            found = await connected.engine.inspect(name)
            if found is not None:
                firewall.helper.image = found.image
                return
        firewall.helper.image = image
