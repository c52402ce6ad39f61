"""``recover``: bring a host back to one serving production container after a crash.

Reads the journal of the deploy that did not finish, and the labels of the
containers the tool made. Before the point of no return it rolls back: every
container of the unfinished deploy goes, blue gets its name back and runs.
After it, the new version stays and the leftovers go. Either way it ends by
checking that production answers healthily. It is idempotent: running it
again on a consistent host changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
import anyio
import structlog

from ._config import Config
from ._deploy import http_session, open_engine
from ._engine import LABEL_DEPLOY, LABEL_MANAGED, LABEL_ROLE, LABEL_SERVICE, ContainerInfo, Engine
from ._errors import RecoveryFailed
from ._state import Journal, JournalRecord, service_lock
from ._watch import LastProbe, poll_until_healthy


@dataclass
class RecoveryReport:
    outcome: str
    actions: list[str] = field(default_factory=list)
    unfinished: str | None = None


class _Recovery:
    def __init__(self, cfg: Config, engine: Engine, record: JournalRecord | None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.record = record
        self.name = cfg.service.name
        self.old_name = f"{self.name}-old"
        self.actions: list[str] = []

    def act(self, what: str) -> None:
        self.actions.append(what)
        structlog.get_logger().info("recover.action", action=what)

    async def ours(self) -> list[ContainerInfo]:
        ids = await self.engine.list_ids({LABEL_SERVICE: self.name, LABEL_MANAGED: "true"})
        infos = [await self.engine.inspect(i) for i in ids]
        return [i for i in infos if i is not None]

    async def remove(self, info: ContainerInfo, why: str) -> None:
        await self.engine.stop(info.id, grace=self.cfg.service.stop_timeout)
        await self.engine.remove(info.id)
        self.act(f"removed {info.name} ({why})")

    async def keep_new(self, record: JournalRecord) -> str:
        prod = await self.engine.inspect(self.name)
        if prod is None or prod.labels.get(LABEL_DEPLOY) != record.deploy_id:
            raise RecoveryFailed(
                f"the deploy was verified, but {self.name} is not its container any more; "
                "inspect `docker ps -a` and decide by hand"
            )
        for info in await self.ours():
            if info.id != prod.id and info.labels.get(LABEL_ROLE) in ("green", "migrate"):
                await self.remove(info, "leftover of the verified deploy")
        if record.blue_id and record.blue_id != prod.id:
            blue = await self.engine.inspect(record.blue_id)
            if blue is not None:
                await self.remove(blue, "the previous version, replaced")
        if not prod.running:
            await self.engine.start(prod.id)
            self.act(f"started {self.name}")
        return f"the new version {record.version} serves"

    async def roll_back(self, record: JournalRecord | None) -> str:
        for info in await self.ours():
            role = info.labels.get(LABEL_ROLE)
            if record is not None and info.labels.get(LABEL_DEPLOY) == record.deploy_id:
                await self.remove(info, f"{role} of the unfinished deploy")
            elif record is None and role in ("green", "migrate"):
                await self.remove(info, f"stray {role}")
        current = await self.engine.inspect(self.name)
        old = await self.engine.inspect(self.old_name)
        blue_id, was_running = (record.blue_id, record.blue_was_running) if record else (None, True)
        if blue_id is None and current is None and old is not None:
            # A switch cut short before its journal named blue: blue is the renamed one.
            blue_id = old.id
        if blue_id is not None:
            blue = await self.engine.inspect(blue_id)
            if blue is None:
                raise RecoveryFailed(f"blue ({blue_id[:12]}) no longer exists; nothing to restore")
            if blue.name != self.name:
                if current is not None and current.id != blue.id:
                    raise RecoveryFailed(
                        f"{self.name} is taken by {current.id[:12]}, which this tool did not "
                        f"start in the unfinished deploy; blue waits as {blue.name}"
                    )
                await self.engine.rename(blue.id, self.name)
                self.act(f"renamed {blue.name} back to {self.name}")
            if was_running and not blue.running:
                await self.engine.start(blue.id)
                self.act(f"started {self.name} (the previous version)")
            return "the previous version serves"
        if current is not None and old is not None:
            if old.running:
                raise RecoveryFailed(
                    f"both {self.name} and {self.old_name} are running; decide by hand"
                )
            await self.remove(old, "leftover previous version")
        return "the production container serves"


async def recover(cfg: Config, *, engine: Engine | None = None) -> RecoveryReport:
    """Bring the service to one healthy production container and no leftovers."""
    log = structlog.get_logger()
    state_dir = cfg.state.dir
    with service_lock(state_dir, cfg.service.name, purpose="recover", deploy_id="-"):
        journal = Journal.load(Journal.path_for(state_dir, cfg.service.name))
        record = journal.record if journal else None
        if journal is not None:
            log.info("recover.unfinished", deploy=journal.describe())
        async with open_engine(engine) as docker, http_session() as http:
            recovery = _Recovery(cfg, docker, record)
            if record is not None and record.committed:
                outcome = await recovery.keep_new(record)
            else:
                outcome = await recovery.roll_back(record)
            if await docker.inspect(cfg.service.name) is None:
                outcome = "no production container exists (there was none before this deploy)"
            else:
                await _await_serving(cfg, http)
        if journal is not None:
            journal.remove()
    log.info("recover.done", outcome=outcome, actions=len(recovery.actions))
    return RecoveryReport(
        outcome=outcome,
        actions=recovery.actions,
        unfinished=journal.describe() if journal else None,
    )


async def _await_serving(cfg: Config, http: aiohttp.ClientSession) -> None:
    last = LastProbe()
    url = cfg.service.url(cfg.service.port, cfg.health.path)
    with anyio.move_on_after(cfg.verify.timeout):
        await poll_until_healthy(
            http, url, cfg.health, interval=cfg.verify.interval, expect_version=None, last=last
        )
        return
    raise RecoveryFailed(
        f"{cfg.service.name} does not answer healthily within {cfg.verify.timeout:g}s: "
        f"{last.explain()}"
    )
