"""Short-lived helper containers: how the remote handoff acts on an engine's host.

On a remote Docker host the tool has no shell; what it needs done there (change
the nftables table, count a container's connections) runs in a helper container
through the engine API, removed when it ends. One runner for every such tool, so
that where its binary comes from and how it is bounded is decided once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import anyio

from rolling_update._engine.model import (
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_SERVICE,
    ContainerSpec,
    Engine,
)
from rolling_update._errors import EngineError, HandoffError, HelperNotRun

HELPER_LIMIT = 10.0
"""Seconds a helper may run; its whole life (create to remove) gets twice that."""

HELPER_ROLE = "helper"
"""The role label of every helper container, whatever tool it runs: one a deploy cut short
left behind (its removal outlived by an engine away for longer) is found by ``recover``
under its service's label."""


class Helper:
    """Runs a tool of the engine's host in a short-lived container, removed when it ends.

    By default (``own_tools`` false) the container runs ``image``, any image with
    ``chroot`` (blue's will do), with the host's root mounted read-only at ``/host``,
    and runs ``chroot /host TOOL ...``: the host's own binaries, so no image needs to
    carry them. With ``own_tools``, ``image`` carries the tools itself and the host's
    root is not mounted at all (stricter, and fit for SELinux hosts).
    """

    def __init__(
        self, engine: Engine, image: str, *, service: str, own_tools: bool = False
    ) -> None:
        self.engine = engine
        self.image = image
        self.service = service
        self.own_tools = own_tools

    async def run(
        self, tool: str, *args: str, network: str = "host", caps: Sequence[str] = ()
    ) -> tuple[int, str]:
        """``tool args`` run to its end on ``network`` (``host``, or ``container:<id>`` for
        that container's network namespace) with ``caps`` added: its exit code and output.

        Shielded and bounded by its own limit, so that a helper is never left behind
        (a create cut short could make one nobody removes): a caller's deadline is
        honoured once the run under way has ended. Raises :class:`HelperNotRun` when the
        engine refuses to make or start it, :class:`HandoffError` when it cannot run
        otherwise or does not end in time."""
        if not self.image:
            # The engine would make a container of no image, refused only at its start.
            raise HelperNotRun(
                f"the {tool} helper could not run: no image to run it in (no container of "
                f"{self.service} on this host to lend its image, and no helper_image configured)"
            )
        host_config: dict[str, Any] = {
            "CapAdd": list(caps),
            "LogConfig": {"Type": "json-file", "Config": {}},
        }
        if not self.own_tools:
            host_config["Binds"] = ["/:/host:ro"]
        spec = ContainerSpec(
            name=f"rolling-update-{tool}-{os.urandom(4).hex()}",
            image=self.image,
            env={},
            command=list(args),
            network=network,
            restart="no",
            labels={LABEL_MANAGED: "true", LABEL_ROLE: HELPER_ROLE, LABEL_SERVICE: self.service},
            stop_timeout=None,
            base={
                "Entrypoint": [tool] if self.own_tools else ["chroot", "/host", tool],
                "User": "0",
                "HostConfig": host_config,
            },
        )
        try:
            with anyio.fail_after(HELPER_LIMIT * 2, shield=True):
                return await self.engine.run_once(spec, limit=HELPER_LIMIT)
        except TimeoutError:
            raise HandoffError(
                f"the {tool} helper did not end within {HELPER_LIMIT * 2:g}s"
            ) from None
        except EngineError as exc:
            said = f"the {tool} helper could not run: {exc}"
            if exc.operation in ("create", "start") and exc.status >= 400:
                # The engine answered no: unlike a call cut short, nothing of it ran.
                raise HelperNotRun(said) from exc
            # Its cause kept: an undo tries again on an engine restarting (saga's engine_away).
            raise HandoffError(said) from exc
