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

import errno
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

from rolling_update._config.settings import (
    Config,
    HostConfig,
    ReplicaConfig,
    ServiceConfig,
    bypass_of,
)
from rolling_update._engine.docker import DockerEngine, Reach
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


@dataclass(frozen=True)
class Unit:
    """One unit of a rollout: a host, or one replica of the service on a host.

    Each is deployed, locked, journalled, recovered and shown on its own, with the
    whole single-host flow; a host's replicas are its units, in order."""

    host: HostConfig
    replica: ReplicaConfig | None = None
    owns_tick: bool = True
    """Whether this unit's production runs the tick loop (``service.tick_replica``)."""
    first_on_host: bool = True
    """The host's first replica: ``rollout.migrate = "per-host"`` migrates there."""
    index: int = 0
    """Its place in the rollout (:func:`units_of`'s order): 0 is the canary, which builds."""

    @property
    def parts(self) -> list[tuple[str, str]]:
        """The unit as (kind, name) pairs, ``host`` then ``replica``: a replica on this
        machine is named alone; name, label and flags are all made from these."""
        parts = []
        if self.replica is None or self.host is not LOCAL:
            parts.append(("host", self.host.name))
        if self.replica is not None:
            parts.append(("replica", self.replica.name))
        return parts

    @property
    def name(self) -> str:
        return "/".join(name for _, name in self.parts)

    @property
    def label(self) -> str:
        """The unit as an error names it: ``host h2``, ``replica brain-2``, or both."""
        return ", ".join(f"{kind} {name}" for kind, name in self.parts)

    @property
    def flags(self) -> str:
        """The command-line options that pick this unit alone."""
        return " ".join(f"--{kind} {name}" for kind, name in self.parts)


def is_rollout(cfg: Config) -> bool:
    """Whether ``cfg`` is deployed as a rollout of units (hosts, replicas) or as one."""
    return bool(cfg.hosts) or cfg.service.replicated


def units_of(cfg: Config) -> list[Unit]:
    """Every unit, canary first: each host's replicas in order, host after host."""
    units: list[Unit] = []
    for host in hosts_of(cfg):
        if not cfg.service.replicated:
            units.append(Unit(host, index=len(units)))
            continue
        service = _host_service(cfg, host)
        for i, replica in enumerate(service.replica_list(), start=1):
            units.append(
                Unit(
                    host,
                    replica,
                    owns_tick=i == service.tick_replica,
                    first_on_host=i == 1,
                    index=len(units),
                )
            )
    return units


def pick(cfg: Config, name: str | None, replica: str | None = None) -> list[Unit]:
    """All units, or those of the host named (``--host``), or the replica (``--replica``)."""
    units = units_of(cfg)
    if name is not None:
        found = [u for u in units if u.host.name == name]
        if not found:
            known = ", ".join(h.name for h in hosts_of(cfg))
            raise ConfigError(f"no host named {name!r}; the hosts are: {known}", key="--host")
        units = found
    if replica is not None:
        found = [u for u in units if u.replica is not None and u.replica.name == replica]
        if not found:
            known = ", ".join(dict.fromkeys(u.replica.name for u in units if u.replica)) or "none"
            raise ConfigError(
                f"no replica named {replica!r}; the replicas are: {known}", key="--replica"
            )
        units = found
    return units


def image_source(units: list[Unit], unit: Unit) -> Unit | None:
    """The unit whose engine ``unit``'s image is copied (or pushed, then pulled) from: the
    canary's, ``units[0]``; none for a unit on that engine, which built the image."""
    canary = units[0]
    return None if unit.host.name == canary.host.name else canary


def bypass_port(cfg: Config, unit: Unit | HostConfig) -> int:
    """The remote handoff's way past the redirect of the unit's production port: the host's
    ``bypass_port``, else (and for each replica) that port + 10000 (or - 10000)."""
    unit = unit if isinstance(unit, Unit) else Unit(unit)
    if unit.replica is not None:
        port = unit.replica.port
    elif unit.host.bypass_port is not None:
        return unit.host.bypass_port
    else:
        port = unit.host.port or cfg.service.port
    return bypass_of(port)


def probe_address(cfg: Config, host: HostConfig) -> str:
    if host.address:
        return host.address
    if host.local:
        return cfg.service.host
    return urlsplit(host.engine).hostname or cfg.service.host


def _host_service(cfg: Config, host: HostConfig) -> ServiceConfig:
    if not cfg.hosts:
        return cfg.service
    return cfg.service.on_host(host).model_copy(update={"host": probe_address(cfg, host)})


def for_unit(cfg: Config, unit: Unit, *, first: bool) -> Config:
    """``cfg`` as it applies to ``unit``: its host's and replica's overrides, its own state
    directory, the actions its replica makes, and (after the canary) no build and, unless
    per host, no migrations."""
    if not is_rollout(cfg):
        return cfg
    base = cfg.state.dir
    assert base is not None, "parse_config sets state.dir"
    svc = _host_service(cfg, unit.host)
    # The lock, journal and audit log of each unit: its deploy is recovered, shown and
    # counted on its own.
    state_dir = base / "hosts" / unit.host.name if cfg.hosts else base
    labels = {"host": unit.host.name} if cfg.hosts else {}
    update: dict[str, Any] = {"env": {**cfg.env, **unit.host.env}}
    if unit.replica is not None:
        replica = unit.replica
        assert replica.container is not None and replica.green_container is not None
        svc = svc.model_copy(
            update={
                "port": replica.port,
                "green_port": replica.green_port,
                "name": replica.container,
                "green_name": replica.green_container,
                "replicas": 1,
                "replica": [],
                "tick_replica": 1,
            }
        )
        state_dir = state_dir / "replicas" / replica.name
        labels["replica"] = replica.name
        # Kept as "all": the replica's own config is one container's, which actions_at
        # takes for the tick's owner; an "others" call would be dropped there.
        update["actions"] = [
            a.model_copy(update={"replicas": "all"})
            for a in cfg.actions
            if a.made_by(owns_tick=unit.owns_tick)
        ]
    update["service"] = svc
    update["state"] = cfg.state.model_copy(update={"dir": state_dir})
    textfile = cfg.metrics.textfile
    if textfile is not None:
        # One file per unit: node_exporter refuses the same series from two files.
        suffix = "-".join(labels.values())
        update["metrics"] = cfg.metrics.model_copy(
            update={
                "textfile": textfile.with_name(f"{textfile.stem}-{suffix}{textfile.suffix}"),
                "labels": {**cfg.metrics.labels, **labels},
            }
        )
    if not first:
        update["build"] = cfg.build.model_copy(update={"enabled": False})
        if cfg.rollout.migrate == "once" or not unit.first_on_host:
            update["migrate"] = cfg.migrate.model_copy(update={"commands": []})
    return cfg.model_copy(update=update)


@dataclass
class Connected:
    """One unit (a host, or a replica on it), reached: its config, engine and firewall."""

    unit: Unit
    config: Config
    engine: Engine
    firewall: Firewall

    @property
    def host(self) -> HostConfig:
        return self.unit.host

    @property
    def name(self) -> str:
        return self.unit.name


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
) -> tuple[str, str | None, Reach]:
    """Forward the remote engine socket (and, for SSH probes, the ports); return the
    local engine URL, the probe address, if forwarded, and the check that the remote
    socket accepts (the local one always does)."""
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

    async def reach() -> None:
        try:
            channel, _ = await conn.create_unix_connection(asyncssh.SSHUNIXSession, host.socket)
        except asyncssh.Error as exc:
            if conn.is_closed() or not isinstance(exc, asyncssh.ChannelOpenError):
                raise ConnectionAbortedError(
                    errno.ECONNABORTED, f"SSH to {parts.hostname}: {exc.reason}"
                ) from None
            # sshd could not connect to the socket: the engine is not listening there.
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, f"{host.socket} on {parts.hostname}: {exc.reason}"
            ) from None
        channel.close()

    return f"unix://{local}", address, reach


@asynccontextmanager
async def connect(
    cfg: Config, unit: Unit, *, image: str = "", engine: Engine | None = None
) -> AsyncIterator[Connected]:
    """Reach ``unit``'s engine (and, for SSH probes, its ports); closed on exit.

    ``image``: what the remote handoff's helper runs when no container of the
    service is there to lend its image (see :func:`_settle_helper`). ``engine``:
    the host's engine, already open (say a :class:`~rolling_update.testing.FakeEngine`),
    used instead of reaching the host's ``engine`` address (nothing is forwarded then,
    and it is left open); the firewall is chosen from that address as ever.
    """
    log = structlog.get_logger()
    limit = cfg.rollout.connect_timeout
    host = unit.host
    host_cfg = for_unit(cfg, unit, first=unit.index == 0)
    bypass = bypass_port(cfg, unit)
    async with AsyncExitStack() as stack:
        if engine is None:
            engine, host_cfg = await _reach(stack, cfg, host, host_cfg, bypass, unit.index)
        else:
            with anyio.fail_after(limit):
                await engine.ping()
        firewall: Firewall = (
            LocalFirewall()
            if host.local
            else EngineFirewall(
                engine,
                host.helper_image or "",
                service=host_cfg.service.name,
                bypass_port=bypass,
                own_nft=host.helper_image is not None,
            )
        )
        if is_rollout(cfg):
            log.info(
                "host.connected", host=unit.name, engine=host.engine, probe=host_cfg.service.host
            )
        connected = Connected(unit=unit, config=host_cfg, engine=engine, firewall=firewall)
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
    reach: Reach | None = None
    # Named as configured: not the SSH forward's local socket, nor the https:// it becomes.
    named: str | None = host.engine if cfg.hosts else None
    if not cfg.hosts:
        url = None  # DOCKER_HOST, or the default socket, as before hosts existed
    elif host.engine.startswith("ssh://"):
        svc = host_cfg.service
        ports = [svc.port, svc.green_port, bypass]
        url, address, reach = await _ssh(stack, host, ports, index, limit)
        if address is not None:
            svc = svc.model_copy(update={"host": address})
            host_cfg = host_cfg.model_copy(update={"service": svc})
    elif host.engine.startswith("tcp://"):
        ssl_context = _tls(host)
    with anyio.fail_after(limit):
        engine = await stack.enter_async_context(
            DockerEngine(
                url, ssl_context=ssl_context, limits=cfg.engine, reach=reach, address=named
            )
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
