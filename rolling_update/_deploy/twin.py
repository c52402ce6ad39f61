"""Blue's twin: green and the new production container are created as blue was.

What the operator set on blue (``docker run`` flags, compose keys) carries
over: mounts, read-only root, tmpfs, pid/ipc/uts/cgroupns modes, user and
groups, capabilities, security options, devices, ulimits, sysctls, init,
shm size, resource limits, log driver and options, extra hosts, DNS, restart
policy, networks and aliases, published ports, labels (compose's included),
healthcheck, stop signal and timeout, working dir, entrypoint and command,
and env. HostConfig is copied whole, so a field this list forgets is kept too.

What blue only has because its *old image* said so is not the operator's:
env entries, cmd, entrypoint, working dir, user, healthcheck, stop signal,
exposed ports, volumes and labels whose value equals the old image's are
left out, so the new image's own values apply (its ``ENV APP_VERSION`` wins).

The tool's config beats blue's: the env file (re-read at every deploy),
``[env]``, the port env and ``[green.env]``. Keys the tool set from its
config on an earlier deploy are named in a label, so a key removed from the
env file does not live on through blue. One exception follows compose: for a
blue made by compose, a key its ``environment:`` sets keeps blue's value over
the env file's (``compose_env``), as ``docker compose up`` would.

Green never restarts by itself (a daemon restart must not bring back a green
that is no longer drained), and its copy of a healthcheck that names the
production port probes green's port instead (:meth:`Twin.green_healthcheck`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rolling_update._engine.model import LABEL_CONFIG_ENV, LABEL_MANAGED_PREFIX

# Config fields an image can set too: inherited only where blue's value differs.
_IMAGE_DEFAULTS = (
    "User",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "Healthcheck",
    "StopSignal",
    "ExposedPorts",
    "Volumes",
    "Shell",
)
# Config fields only the operator sets.
_OPERATOR_ONLY = ("StopTimeout", "Tty", "OpenStdin", "StdinOnce", "Domainname", "MacAddress")
COMPOSE_LABELS = "com.docker.compose."
_SHARED_MODES = ("host", "none", "bridge", "default")
# Host addresses a redirect keeps a connection on: every address of the host, or
# loopback (the output hook redirects to it, and nothing comes in from outside).
_REDIRECTABLE = frozenset({"", "0.0.0.0", "::", "127.0.0.1", "::1"})


def _env(items: Sequence[str] | None) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items or ():
        key, _, value = item.partition("=")
        env[key] = value
    return env


@dataclass(frozen=True)
class Twin:
    """What blue's operator set, ready to create another container like it."""

    body: dict[str, Any] = field(repr=False)
    """Create-body fields (Config's and ``HostConfig``), without image, env, labels, network."""
    env: dict[str, str] = field(repr=False)
    labels: dict[str, str]
    network_mode: str
    restart: str
    networks: dict[str, list[str]]
    """User-defined networks blue is on, with its aliases there."""
    published: dict[str, list[dict[str, str]]]
    """``HostConfig.PortBindings``: container port → host bindings."""
    found_env: dict[str, str] = field(default_factory=dict, repr=False)
    """Blue's env without its old image's entries, the tool's own keys included (for diffs)."""
    compose_env: frozenset[str] = frozenset()
    """Keys compose's ``environment:`` sets for blue: blue's value wins over the env file."""

    @classmethod
    def of(
        cls,
        blue: Mapping[str, Any],
        old_image: Mapping[str, Any],
        *,
        compose_env: frozenset[str] = frozenset(),
    ) -> Twin:
        """The twin of ``blue`` (raw inspect), given its image's ``Config`` (raw inspect)."""
        config = blue.get("Config") or {}
        body: dict[str, Any] = {}
        for key in _IMAGE_DEFAULTS:
            value = config.get(key)
            if value not in (None, "", [], {}) and value != old_image.get(key):
                body[key] = copy.deepcopy(value)
        for key in _OPERATOR_ONLY:
            if config.get(key) not in (None, "", False):
                body[key] = config[key]
        host = {k: copy.deepcopy(v) for k, v in (blue.get("HostConfig") or {}).items()}
        network_mode = str(host.pop("NetworkMode", "") or "default")
        restart_policy = host.get("RestartPolicy") or {}
        published = host.pop("PortBindings", None) or {}
        body["HostConfig"] = {k: v for k, v in host.items() if v is not None}

        image_env = set(old_image.get("Env") or [])
        env = {k: v for k, v in _env(config.get("Env")).items() if f"{k}={v}" not in image_env}
        labels = dict(config.get("Labels") or {})
        for key in list(labels):
            if key.startswith(LABEL_MANAGED_PREFIX):
                continue
            if (old_image.get("Labels") or {}).get(key) == labels[key]:
                del labels[key]
        found_env = dict(env)
        set_by_tool = labels.get(LABEL_CONFIG_ENV, "")
        for key in filter(None, set_by_tool.split(",")):
            if key not in compose_env:
                env.pop(key, None)

        short_id = str(blue.get("Id", ""))[:12]
        networks: dict[str, list[str]] = {}
        for name, endpoint in ((blue.get("NetworkSettings") or {}).get("Networks") or {}).items():
            if name in _SHARED_MODES:
                continue
            aliases = [a for a in (endpoint or {}).get("Aliases") or [] if a != short_id]
            networks[name] = aliases
        return cls(
            body=body,
            env=env,
            labels={k: v for k, v in labels.items() if not k.startswith(LABEL_MANAGED_PREFIX)},
            network_mode=network_mode,
            restart=str(restart_policy.get("Name") or "no"),
            networks=networks,
            published=published,
            found_env=found_env,
            compose_env=compose_env,
        )

    def conflicts(self, blue: Mapping[str, Any], port: int) -> list[str]:
        """Fields that keep this twin from running beside blue, named for the operator."""
        found = []
        for container_port, bindings in self.published.items():
            for binding in bindings or []:
                if binding.get("HostPort") and binding.get("HostPort") != str(port):
                    found.append(
                        f"HostConfig.PortBindings {container_port} -> host port "
                        f"{binding['HostPort']} (two containers cannot bind it)"
                    )
        networks = (blue.get("NetworkSettings") or {}).get("Networks") or {}
        for name, endpoint in networks.items():
            ipam = (endpoint or {}).get("IPAMConfig") or {}
            if ipam.get("IPv4Address") or ipam.get("IPv6Address"):
                found.append(f"a static address on network {name} (IPAMConfig)")
        if self.body.get("MacAddress"):
            found.append("Config.MacAddress (two containers cannot share it)")
        return found

    def production_bindings(self, port: int) -> list[dict[str, str]]:
        """Blue's bindings of host ``port`` (any container port)."""
        return [
            binding
            for bindings in self.published.values()
            for binding in bindings or []
            if binding.get("HostPort") == str(port)
        ]

    def container_port(self, port: int) -> int:
        """The port inside the container that host ``port`` reaches (``port`` itself on
        the host network, or where nothing publishes it)."""
        for container_port, bindings in self.published.items():
            if any(b.get("HostPort") == str(port) for b in bindings or []):
                number, _, _ = container_port.partition("/")
                return int(number)
        return port

    def handoff_obstacle(self, port: int) -> str | None:
        """Why a redirect of the host's ``port`` would not move this service's clients, or
        ``None``: on the host network it is the service's own port; off it, only a port
        blue publishes on every host address (or loopback) is the host's to redirect."""
        if self.network_mode == "host":
            return None
        bindings = self.production_bindings(port)
        if not bindings:
            return (
                f"the service runs on network {self.network_mode!r} and blue does not publish "
                f"port {port} on the host (its clients reach it over that network)"
            )
        bound = sorted({b.get("HostIp") or "" for b in bindings} - _REDIRECTABLE)
        if bound:
            return (
                f"blue publishes port {port} on {', '.join(bound)} only (a redirect sends a "
                "connection to the main address of the interface it came in on, or to "
                "loopback, where green's published port may not be)"
            )
        return None

    def healthcheck_names_port(self, image: Mapping[str, Any], port: int) -> bool:
        """Whether the healthcheck green runs hard-codes ``port`` (on host network it then
        probes blue, not green)."""
        check = self.body.get("Healthcheck") or image.get("Healthcheck") or {}
        return any(str(port) in str(part) for part in check.get("Test") or [])

    def green_healthcheck(self, port: int, green_port: int) -> tuple[dict[str, Any] | None, str]:
        """Green's copy of blue's own healthcheck, and what was done to it.

        On the host network a check that names ``port`` (compose's hard-codes
        ``localhost:5221``) would report blue's health as green's: ``:port`` is
        rewritten to ``:green_port``; a check naming the port otherwise is turned off.
        ``None``: blue set no healthcheck of its own (the new image's applies).
        """
        check = self.body.get("Healthcheck")
        if not check or not any(str(port) in str(part) for part in check.get("Test") or []):
            return None, ""
        test = [str(part) for part in check["Test"]]
        rewritten = [re.sub(rf":{port}(?!\d)", f":{green_port}", part) for part in test]
        if not any(str(port) in part for part in rewritten):
            return {**check, "Test": rewritten}, f"probes :{green_port} instead of :{port}"
        return {"Test": ["NONE"]}, f"turned off: it names port {port} other than as :{port}"

    def bindings_for(self, service_port: int, port: int) -> dict[str, list[dict[str, str]]]:
        """Published ports of a twin serving on ``port`` where blue serves on ``service_port``."""
        if port == service_port:
            return copy.deepcopy(self.published)
        moved: dict[str, list[dict[str, str]]] = {}
        for container_port, bindings in self.published.items():
            ours = [b for b in bindings or [] if b.get("HostPort") == str(service_port)]
            if ours:
                proto = container_port.partition("/")[2] or "tcp"
                moved[f"{port}/{proto}"] = [{**b, "HostPort": str(port)} for b in ours]
        return moved


def diff(blue: Mapping[str, Any], body: Mapping[str, Any], twin: Twin | None = None) -> list[str]:
    """A short account of how a create body differs from blue (env by name only: secrets).

    With ``twin``, env is compared with what the operator set on blue, not with
    what blue's old image added.
    """
    config = blue.get("Config") or {}
    lines = []
    if config.get("Image") != body.get("Image"):
        lines.append(f"Image: {config.get('Image')} -> {body.get('Image')}")
    before = twin.found_env if twin is not None else _env(config.get("Env"))
    after = _env(body.get("Env"))
    for key in sorted(set(before) | set(after)):
        if key not in after:
            lines.append(f"Env: -{key}")
        elif key not in before:
            lines.append(f"Env: +{key}")
        elif before[key] != after[key]:
            lines.append(f"Env: ~{key}")
    labels_before, labels_after = config.get("Labels") or {}, body.get("Labels") or {}
    for key in sorted(set(labels_before) | set(labels_after)):
        if labels_before.get(key) != labels_after.get(key) and not key.startswith(
            LABEL_MANAGED_PREFIX
        ):
            lines.append(f"Labels: {key}")
    host_before, host_after = blue.get("HostConfig") or {}, body.get("HostConfig") or {}
    for key in sorted(set(host_before) | set(host_after)):
        if host_before.get(key) != host_after.get(key) and host_after.get(key) is not None:
            lines.append(f"HostConfig.{key}")
    for key in _IMAGE_DEFAULTS + _OPERATOR_ONLY:
        if key in body and body[key] != config.get(key):
            lines.append(key)
    return lines
