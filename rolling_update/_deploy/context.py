"""What the steps of one deploy share: the engine, an HTTP session, and facts.

Each step reads the facts earlier steps recorded (the image, green's id, the
renamed blue) and records its own, so that its ``compensate()`` undoes exactly
what its ``run()`` did, and later steps can build on it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from rolling_update._config.settings import Config
from rolling_update._deploy.twin import COMPOSE_LABELS, Twin
from rolling_update._engine.model import (
    LABEL_CONFIG_ENV,
    LABEL_DEPLOY,
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_SERVICE,
    LABEL_VERSION,
    ContainerInfo,
    ContainerSpec,
    Engine,
)
from rolling_update._handoff.nft import Firewall, LocalFirewall
from rolling_update._handoff.port import PortHandoff
from rolling_update._observe import measures
from rolling_update._state.journal import Journal
from rolling_update._watch.probe import HealthBaseline


@dataclass
class DeployContext:
    config: Config
    engine: Engine
    http: aiohttp.ClientSession
    deploy_id: str
    version: str
    image: str
    env: dict[str, str] = field(repr=False)
    """Env of every container: the env-file, then ``[env]`` on top."""

    green_id: str | None = None
    green_started: float | None = None
    """Monotonic time green started: the two-container window opens."""
    green_since_nano: int = 0
    """Engine time (ns) just before green was created: where its events begin."""
    blue_id: str | None = None
    """The production container found when the switch began, if any."""
    blue_was_running: bool = False
    blue_health: HealthBaseline | None = None
    """Blue's health as the preflight found it: what a rollback must bring back."""
    handoff: bool = False
    """The switch hands production's port over in the kernel (see _handoff)."""
    handoff_active: bool = False
    """The redirect to green is in place now (a client's view is measured meanwhile)."""
    handoff_began: float | None = None
    handoff_ended: float | None = None
    """Monotonic time the redirect to green was removed: green's connections drain from then."""
    firewall: Firewall = field(default_factory=LocalFirewall)
    """Where the handoff's redirect is applied: this machine, or the engine's host."""
    twin: Twin | None = None
    """What the operator set on blue, for green and the new production container."""
    blue_raw: dict[str, Any] | None = field(default=None, repr=False)
    """Blue's inspect as the preflight found it (for the diff in the log)."""
    production_id: str | None = None
    blue_bootable: bool | None = None
    """Whether blue's image passed ``migrate.blue_check`` after the migrations (``None``:
    not checked): a rollback after the switch restarts blue only if it could boot."""
    blue_serving: str | None = None
    """Id of the blue the preflight found running: a rollback must leave it serving."""
    last_blue_ok: float | None = None
    """Monotonic time of blue's last good answer before it was stopped."""
    switch_began: float | None = None
    final_health: Any = None
    measured: dict[str, Any] = field(default_factory=dict)
    """Figures reported at the end of the deploy (seconds, bytes, counts)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Free space for custom steps to pass facts along."""
    journal: Journal | None = None
    """The durable record ``recover`` reads if this process dies mid-deploy."""

    def is_blue_serving(self, production: ContainerInfo | None) -> bool:
        """Whether ``production`` (what now carries the service's name) is the blue the
        preflight found running, running again."""
        return production is not None and production.id == self.blue_serving and production.running

    def record(self, **facts: Any) -> None:
        """Persist facts a recovery needs, *before* the action they describe."""
        if self.journal is not None:
            self.journal.update(**facts)

    @property
    def port_handoff(self) -> PortHandoff:
        """Production's port on this deploy's firewall: moved to green and back."""
        return PortHandoff.of(self.firewall, self.config.service)

    def url(self, port: int, path: str, *, as_client: bool = False) -> str:
        """Where the tool probes ``path`` on ``port``: the real listener, past any redirect,
        unless ``as_client`` (a client's view, through it)."""
        redirected = self.handoff_active and not as_client
        return self.config.service.url(
            self.port_handoff.probe_port(port, redirected=redirected), path
        )

    def labels(self, role: str) -> dict[str, str]:
        return {
            LABEL_MANAGED: "true",
            LABEL_SERVICE: self.config.service.name,
            LABEL_ROLE: role,
            LABEL_DEPLOY: self.deploy_id,
            LABEL_VERSION: self.version,
        }

    def container_env(
        self, port: int | None, overrides: dict[str, str] | None = None
    ) -> dict[str, str]:
        env = dict(self.env)
        if port is not None:
            env.update(dict.fromkeys(self.config.service.port_env, str(port)))
        env.update(overrides or {})
        return env

    def spec(
        self,
        role: str,
        name: str,
        port: int | None,
        *,
        overrides: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> ContainerSpec:
        """The create spec of a container of ``role``: blue's twin, else from config.

        ``role`` is production, green or migrate. Green is published on its
        own port and joins blue's networks without blue's aliases (it must not
        take production traffic); a migration runs once (no restart, no
        healthcheck, nothing published).
        """
        svc = self.config.service
        config_env = self.container_env(port, overrides)
        twin = self.twin
        # Compose's environment: beats its env_file; the tool's own [env], port env and
        # green overrides still beat both.
        kept = (
            set()
            if twin is None
            else twin.compose_env - {*self.config.env, *svc.port_env, *(overrides or {})}
        )
        config_env = {k: v for k, v in config_env.items() if k not in kept}
        labels = self.labels(role)
        # Named so that the next deploy's twin drops them before applying its config.
        labels[LABEL_CONFIG_ENV] = ",".join(sorted({*self.env, *svc.port_env} - kept))
        # Green never restarts by itself: brought back by a daemon restart, it would
        # no longer be drained and would dispatch beside blue.
        restart = "no" if role in ("migrate", "green") else None
        if twin is None:
            return ContainerSpec(
                name=name,
                image=self.image,
                env=config_env,
                command=command,
                network=svc.network,
                restart=restart or svc.restart,
                labels=labels,
                stop_timeout=svc.stop_timeout,
            )
        base = copy.deepcopy(twin.body)
        host = base["HostConfig"]
        inherited = dict(twin.labels)
        if role == "green" and port is not None:
            check, _ = twin.green_healthcheck(svc.port, port)
            if check is not None:
                base["Healthcheck"] = check
        if role == "migrate":
            base["Healthcheck"] = {"Test": ["NONE"]}
        elif port is not None:
            host["PortBindings"] = twin.bindings_for(svc.port, port)
            exposed = dict(base.get("ExposedPorts") or {})
            exposed.update({key: {} for key in host["PortBindings"]})
            if exposed:
                base["ExposedPorts"] = exposed
        if role != "production":
            # Compose would count green or a migration as one more replica of the service.
            inherited = {k: v for k, v in inherited.items() if not k.startswith(COMPOSE_LABELS)}
        networks = {n: (a if role == "production" else []) for n, a in twin.networks.items()}
        return ContainerSpec(
            name=name,
            image=self.image,
            env={**twin.env, **config_env},
            command=command,
            network=twin.network_mode,
            restart=restart or twin.restart,
            labels={**inherited, **labels},
            # Blue's own StopTimeout, if it had one, is in base; none is added.
            stop_timeout=None,
            base=base,
            networks=networks,
        )

    @property
    def two_container_deadline(self) -> float | None:
        """Monotonic time by which blue must be stopped (``limits.two_containers``)."""
        if self.green_started is None:
            return None
        return self.green_started + self.config.limits.two_containers

    def wait_limit(self, own: float) -> tuple[float, str]:
        """The deadline of a wait before the switch, and how to name it: its own, or what
        is left of ``limits.two_containers`` once blue's stop is set aside, if sooner.

        One budget over every phase (green's warm-up, the tick wait, the actions),
        so that the switch always has the time to stop blue inside the bound.
        """
        deadline = self.two_container_deadline
        if deadline is not None:
            left = deadline - time.monotonic() - self.config.service.stop_timeout
            if left < own:
                return max(0.0, left), (
                    f"what was left of limits.two_containers = "
                    f"{self.config.limits.two_containers:g}s ({max(0.0, left):.1f}s)"
                )
        return own, f"{own:g}s"

    @property
    def green_memory_limit(self) -> int | None:
        mb = self.config.limits.green_memory_mb
        return int(mb * 2**20) if mb else None

    def note_green_memory(self, peak: int) -> None:
        if peak:
            mb = round(peak / 2**20, 1)
            self.measured[measures.GREEN_MEMORY_PEAK] = max(
                mb, self.measured.get(measures.GREEN_MEMORY_PEAK, 0)
            )

    def green_watch_args(self) -> dict[str, Any]:
        """What every watch of green checks: its memory bar and the two-container deadline."""
        return {
            "memory_limit": self.green_memory_limit,
            "deadline": self.two_container_deadline,
            "deadline_reason": (
                f"ran beside blue for limits.two_containers = "
                f"{self.config.limits.two_containers:g}s"
            ),
        }

    @property
    def old_name(self) -> str:
        """Name blue carries between the switch and its removal."""
        return self.config.service.old_name
