"""What the steps of one deploy share: the engine, an HTTP session, and frozen records.

The deploy starts with the release and what the preflight found; each step gives
the records it produces (``ctx.give``) and gets the ones earlier steps gave
(``ctx.get``), so that its ``compensate()`` undoes exactly what its ``run()`` did,
and later steps can build on it (see :mod:`rolling_update._deploy.records`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import aiohttp

from rolling_update._config.settings import Config
from rolling_update._deploy.records import GreenStarted, Preflight, Redirected
from rolling_update._deploy.release import Release
from rolling_update._deploy.twin import COMPOSE_LABELS
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
from rolling_update._errors import PreflightError
from rolling_update._handoff.nft import Firewall, LocalFirewall
from rolling_update._handoff.port import PortHandoff
from rolling_update._observe import measures
from rolling_update._state.journal import Journal

R = TypeVar("R")


@dataclass
class DeployContext:
    config: Config
    engine: Engine
    http: aiohttp.ClientSession
    deploy_id: str
    release: Release
    """What is deployed: version, image, env (frozen)."""
    found: Preflight = field(default_factory=lambda: Preflight(blue=None, blue_health=None))
    """What the preflight found (frozen)."""
    firewall: Firewall = field(default_factory=LocalFirewall)
    """Where the handoff's redirect is applied: this machine, or the engine's host."""
    measured: dict[str, Any] = field(default_factory=dict)
    """Figures reported at the end of the deploy (seconds, bytes, counts)."""
    journal: Journal | None = None
    """The durable record ``recover`` reads if this process dies mid-deploy."""
    given: dict[type, Any] = field(default_factory=dict, repr=False)
    """The records steps gave, by their type (see :mod:`rolling_update._deploy.records`)."""

    def give(self, record: object) -> None:
        """Hand ``record`` on to later steps (and this step's undo); replaces one of its kind."""
        self.given[type(record)] = record

    def get(self, kind: type[R]) -> R:
        """The record of ``kind`` an earlier step gave; the plan check makes sure one did."""
        found = self.given.get(kind)
        if found is None:
            raise PreflightError(f"no step gave {kind.__name__} before it was needed")
        return cast(R, found)

    def find(self, kind: type[R]) -> R | None:
        """The record of ``kind``, if a step gave one (a step that may run without it)."""
        return cast(R | None, self.given.get(kind))

    @property
    def version(self) -> str:
        return self.release.version

    @property
    def image(self) -> str:
        return self.release.image

    @property
    def env(self) -> Mapping[str, str]:
        """Env of every container: the env-file, then ``[env]`` on top."""
        return self.release.env

    @property
    def handoff(self) -> bool:
        """The switch hands production's port over in the kernel (see _handoff)."""
        return self.found.handoff

    @property
    def handoff_active(self) -> bool:
        """The redirect to green is in place now."""
        redirected = self.find(Redirected)
        return redirected is not None and redirected.active

    @property
    def green_id(self) -> str | None:
        green = self.find(GreenStarted)
        return None if green is None else green.id

    def is_blue_serving(self, production: ContainerInfo | None) -> bool:
        """Whether ``production`` (what now carries the service's name) is the blue the
        preflight found running, running again."""
        return (
            production is not None
            and production.id == self.found.blue_serving
            and production.running
        )

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
        twin = self.found.twin
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
        green = self.find(GreenStarted)
        if green is None:
            return None
        return green.started + self.config.limits.two_containers

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
        """What every watch of green checks: its memory bar, the two-container deadline, and
        blue beside it (if one serves)."""
        return {
            "beside": self.found.blue_serving,
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
