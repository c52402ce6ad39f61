"""Production's port of one service on one firewall: moved to green, given back, and probed.

Every place that moves the port or asks where it points goes through
:class:`PortHandoff`: the handoff steps, the preflight, ``recover`` and ``status``.
It also says which port reaches production's real listener while the redirect is
in place (the tool's marked sockets pass it on this machine; on a remote host
only the bypass port does), and forgets the connections a stopped listener reset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
import structlog

from rolling_update._config.settings import ServiceConfig
from rolling_update._errors import HandoffError
from rolling_update._handoff.helper import HELPER_LIMIT
from rolling_update._handoff.nft import Firewall, RedirectRule, table_name

FORGET_LIMIT = HELPER_LIMIT * 2
"""Seconds :meth:`PortHandoff.forget` may take: on a remote host, a helper's whole life."""


@dataclass(frozen=True)
class PortHandoff:
    firewall: Firewall
    service: str
    port: int
    green_port: int

    @classmethod
    def of(cls, firewall: Firewall, service: ServiceConfig) -> PortHandoff:
        return cls(firewall, service.name, service.port, service.green_port)

    @property
    def table(self) -> str:
        return table_name(self.service)

    async def to_green(self, share: int = 100) -> None:
        """New connections for production's port go to green's: all, or ``share`` percent of
        them, drawn per connection (the gradual shift); one atomic change."""
        await self.firewall.redirect(self.table, self.port, self.green_port, share)

    async def release(self) -> None:
        """Production's port is production's again (idempotent)."""
        await self.firewall.remove(self.table)

    async def target(self) -> RedirectRule | None:
        """Where production's port is redirected to now, and what share of its new
        connections (a shift's step left in place), or ``None``."""
        return await self.firewall.target(self.table, self.port)

    async def forget(self, stopped: int) -> None:
        """Once the listener on port ``stopped`` (green's, or production's own) has stopped:
        conntrack's entries of the connections to production's port it reset go, so that a
        new connection from one of their source ports is not sent to that port, where
        nothing listens any more (:mod:`~rolling_update._handoff.conntrack`). Bounded; a
        failure is a warning: the entries expire by themselves within 10 s."""
        log = structlog.get_logger().bind(port=self.port, reply_port=stopped)
        began = time.monotonic()
        why = f"not done within {FORGET_LIMIT:g}s"
        with anyio.move_on_after(FORGET_LIMIT):
            try:
                removed = await self.firewall.forget(self.port, stopped)
            except HandoffError as exc:
                why = str(exc)
            else:
                seconds = round(time.monotonic() - began, 3)
                log.info("handoff.conntrack_forgotten", removed=removed, seconds=seconds)
                return
        log.warning(
            "handoff.conntrack_kept",
            why=why,
            consequence=f"for up to 10 s (nf_conntrack_tcp_timeout_close) a new connection to "
            f"port {self.port} from the source port of one reset on port {stopped} is sent "
            "there, and refused",
        )

    async def any_table(self) -> bool:
        """Whether the service's table exists at all (whatever it redirects)."""
        return await self.firewall.target(self.table) is not None

    def probe_port(self, port: int, *, redirected: bool) -> int:
        """The port that reaches ``port``'s real listener: past the redirect of production's
        port, while it is in place, through the firewall's bypass port where it has one."""
        bypass = self.firewall.bypass_port
        if redirected and port == self.port and bypass is not None:
            return bypass
        return port
