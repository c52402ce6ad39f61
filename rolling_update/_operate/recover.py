"""``recover``: bring a host back to one serving production container after a crash.

Reads the journal of the deploy that did not finish (or, when that was kept
in another state directory, the mark the deploy left on the engine), and the
labels of the containers the tool made. Before the point of no return it
rolls back: every container of the unfinished deploy goes, blue gets its name
back and runs, and must be as healthy as the deploy found it. After the point
of no return, the new version stays and the leftovers go. One rule holds
throughout: the only container that can serve is never removed, so when blue
is gone the new version is kept (and started) instead. It is idempotent:
running it again on a consistent host changes nothing.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import aiohttp
import anyio
import structlog

from rolling_update._config.settings import Config
from rolling_update._deploy.outcome import Outcome
from rolling_update._deploy.policy import in_the_way, rename_blue
from rolling_update._deploy.session import open_engine, open_http
from rolling_update._engine.model import (
    LABEL_DEPLOY,
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_SERVICE,
    ContainerInfo,
    Engine,
)
from rolling_update._errors import EngineError, RecoveryFailed
from rolling_update._handoff.helper import HELPER_ROLE
from rolling_update._handoff.nft import Firewall, LocalFirewall
from rolling_update._handoff.port import PortHandoff
from rolling_update._observe.history import Attempt
from rolling_update._observe.history import append as history_append
from rolling_update._observe.metrics import write_metrics
from rolling_update._state.journal import Journal, JournalRecord
from rolling_update._state.lock import service_lock
from rolling_update._state.mark import (
    MARK_LIMIT,
    marker_holder_alive,
    marker_name,
    record_from_marker,
    refuse_marked,
)
from rolling_update._watch.health import await_serving
from rolling_update._watch.probe import HealthBaseline, probe


@dataclass
class RecoveryReport:
    outcome: str
    actions: list[str] = field(default_factory=list)
    unfinished: str | None = None


Verb = Literal["remove", "rename", "start", "restart", "note"]


@dataclass(frozen=True)
class Action:
    """One thing recover does to a container, with its reason: computed first, then done."""

    verb: Verb
    name: str
    """The container's name when the action is decided."""
    why: str
    container_id: str = ""
    new_name: str | None = None
    last: bool = False
    """Green behind a redirect: removed only once production answers and the redirect is gone."""
    green: bool = False
    """A green removed: conntrack's entries of the connections its exit reset go with it."""

    def describe(self) -> str:
        if self.verb == "remove":
            return f"removed {self.name} ({self.why})"
        if self.verb == "rename":
            return f"renamed {self.name} back to {self.new_name}"
        if self.verb == "start":
            return f"started {self.name} ({self.why})"
        if self.verb == "restart":
            return f"restarted {self.name} ({self.why})"
        return self.why


@dataclass
class RecoveryPlan:
    """What recover will do, decided from the journal (or the engine mark) and the engine."""

    outcome: str
    actions: list[Action] = field(default_factory=list)
    baseline: HealthBaseline | None = None
    """Set when blue is brought back: the health it must reach."""
    redirected: bool = False
    """Production's port is redirected to green: given back once production answers."""
    hand_over: bool = False
    """The running production container goes: production's port is redirected to a running
    green first, as a deploy's handoff does, so that the port never goes dark."""

    def lines(self, port: int) -> list[str]:
        """The actions in the order they are carried out, in words."""
        first = [handed_over(port)] if self.hand_over else []
        first += [a.describe() for a in self.actions if not a.last]
        release = [f"removed the redirect of port {port} to green"] if self.redirected else []
        return first + release + [a.describe() for a in self.actions if a.last]


class _Decision:
    """Reads the engine once per container it asks about, and decides; changes nothing."""

    def __init__(self, cfg: Config, engine: Engine, record: JournalRecord | None, redirected: bool):
        self.cfg = cfg
        self.engine = engine
        self.record = record
        self.name = cfg.service.name
        self.old_name = cfg.service.old_name
        self.plan = RecoveryPlan(outcome="", redirected=redirected)

    def remove(self, info: ContainerInfo, why: str, *, last: bool = False) -> None:
        """``last``: only once production answers (a green behind a redirect is always)."""
        green = info.labels.get(LABEL_ROLE) == "green"
        last = last or (self.plan.redirected and green)
        self.plan.actions.append(Action("remove", info.name, why, info.id, last=last, green=green))

    def removed(self, info: ContainerInfo | None) -> bool:
        return info is not None and any(
            a.verb == "remove" and a.container_id == info.id for a in self.plan.actions
        )

    def note(self, what: str) -> None:
        self.plan.actions.append(Action("note", "", what))

    def remove_unless_foreign(self, info: ContainerInfo, why: str) -> None:
        """The one policy (``policy.in_the_way``) for a container the journal does not name."""
        reason = in_the_way(info, self.name)
        if reason is None:
            self.remove(info, why)
        else:
            self.note(f"left {info.name} in place: {reason}; remove it by hand")

    async def ours(self) -> list[ContainerInfo]:
        ids = await self.engine.list_ids({LABEL_SERVICE: self.name, LABEL_MANAGED: "true"})
        infos = [await self.engine.inspect(i) for i in ids]
        return [i for i in infos if i is not None]

    async def keep_new(self, record: JournalRecord, prod: ContainerInfo) -> str:
        for info in await self.ours():
            if info.id != prod.id and info.labels.get(LABEL_ROLE) in ("green", "migrate"):
                self.remove(info, "leftover of the deploy")
        if record.blue_id and record.blue_id != prod.id:
            blue = await self.engine.inspect(record.blue_id)
            if blue is not None:
                # Started again, the new version answers before the one container that
                # could serve instead goes.
                self.remove(blue, "the previous version, replaced", last=not prod.running)
        if not prod.running:
            self.plan.actions.append(Action("start", self.name, record.version, prod.id))
        return f"the new version {record.version} serves"

    async def find_blue(self, record: JournalRecord | None) -> ContainerInfo | None:
        current = await self.engine.inspect(self.name)
        old = await self.engine.inspect(self.old_name)
        blue_id = record.blue_id if record else None
        deploy_id = record.deploy_id if record else None
        if (
            blue_id is None
            and old is not None
            and (current is None or current.labels.get(LABEL_DEPLOY) == deploy_id)
        ):
            # A switch cut short before its journal named blue: blue is the renamed one.
            blue_id = old.id
        return None if blue_id is None else await self.engine.inspect(blue_id)

    async def decide(self) -> RecoveryPlan:
        self.plan.outcome = await self._decide(self.record)
        for info in await self.ours():
            # A deploy's helpers end within its run; a running one may be a `status`'s
            # (which takes no lock), and one left behind has ended or never started.
            if info.labels.get(LABEL_ROLE) == HELPER_ROLE and not info.running:
                self.remove(info, "a helper container a deploy cut short left behind")
        if not self.plan.redirected and self.cfg.switch.mode == "handoff":
            await self._hand_over()
        return self.plan

    async def _hand_over(self) -> None:
        """The running production container is to go: production's port goes to a running
        green first, and green goes last, once production answers again."""
        prod = await self.engine.inspect(self.name)
        if prod is None or not prod.running or not self.removed(prod):
            return
        greens = {
            i.id
            for i in await self.ours()
            if i.labels.get(LABEL_ROLE) == "green" and i.running and i.id != prod.id
        }
        if not greens:
            return
        self.plan.hand_over = self.plan.redirected = True
        self.plan.actions = [
            replace(a, last=True) if a.container_id in greens else a for a in self.plan.actions
        ]

    async def _decide(self, record: JournalRecord | None) -> str:
        prod = await self.engine.inspect(self.name)
        new = (
            prod
            if prod is not None
            and record is not None
            and prod.labels.get(LABEL_DEPLOY) == record.deploy_id
            else None
        )
        if record is not None and record.committed:
            if new is None:
                raise RecoveryFailed(
                    f"the deploy was verified, but {self.name} is not its container any more; "
                    "inspect `docker ps -a` and decide by hand"
                )
            return await self.keep_new(record, new)
        blue = await self.find_blue(record)
        if record is not None and record.blue_id and blue is None and new is not None:
            # Blue is gone (removed by hand, or by a cleanup cut short): the new
            # container is the only one that can serve. Keep it; never leave none.
            self.note(f"blue ({record.blue_id[:12]}) no longer exists: kept the new version")
            return await self.keep_new(record, new)
        if (
            record is not None
            and record.blue_bootable is False
            and blue is not None
            and not blue.up
            and new is not None
        ):
            # Started again, blue would crash-loop on the schema the migrations left.
            self.note(
                f"blue ({blue.id[:12]}) cannot boot on the migrated schema "
                "(migrate.blue_check failed): kept the new version"
            )
            return await self.keep_new(record, new)
        return await self.roll_back(record, blue)

    async def roll_back(self, record: JournalRecord | None, blue: ContainerInfo | None) -> str:
        for info in await self.ours():
            role = info.labels.get(LABEL_ROLE)
            if blue is not None and info.id == blue.id:
                continue
            if record is not None and info.labels.get(LABEL_DEPLOY) == record.deploy_id:
                self.remove(info, f"{role} of the unfinished deploy")
            elif record is None and role in ("green", "migrate"):
                self.remove(info, f"stray {role}")
        current = await self.engine.inspect(self.name)
        current = None if self.removed(current) else current
        if blue is not None:
            if blue.name != self.name:
                if current is not None and current.id != blue.id:
                    raise RecoveryFailed(
                        f"{self.name} is taken by {current.id[:12]}, which this tool did not "
                        f"start in the unfinished deploy; blue waits as {blue.name}"
                    )
                self.plan.actions.append(
                    Action("rename", blue.name, "", blue.id, new_name=self.name)
                )
            was_running = record.blue_was_running if record and record.blue_id else True
            if was_running and not blue.running:
                self.plan.actions.append(
                    Action("start", self.name, "the previous version", blue.id)
                )
            elif blue.running and record is not None and record.blue_told_to_drain:
                if record.blue_bootable is False:
                    self.note(
                        f"blue ({blue.id[:12]}) was asked to drain but cannot boot on the "
                        "migrated schema (migrate.blue_check failed): kept running as it is"
                    )
                else:
                    self.plan.actions.append(
                        Action("restart", self.name, "it was asked to drain", blue.id)
                    )
            self.plan.baseline = record.blue_health if record else None
            return "the previous version serves"
        old = await self.engine.inspect(self.old_name)
        old = None if self.removed(old) else old
        if current is not None and old is not None:
            if old.running:
                raise RecoveryFailed(
                    f"both {self.name} and {self.old_name} are running; decide by hand"
                )
            self.remove_unless_foreign(old, "leftover previous version")
        return "the production container serves"


async def decide(
    cfg: Config, engine: Engine, record: JournalRecord | None, *, redirected: bool
) -> RecoveryPlan:
    """What recover would do now, with a reason for each action; changes nothing."""
    return await _Decision(cfg, engine, record, redirected).decide()


class _Carrying:
    """Carries out a plan's actions in order, saying each as it is done."""

    def __init__(self, cfg: Config, engine: Engine) -> None:
        self.cfg = cfg
        self.engine = engine
        self.done: list[str] = []

    def said(self, what: str) -> None:
        self.done.append(what)
        structlog.get_logger().info("recover.action", action=what)

    async def act(self, action: Action) -> None:
        if action.verb == "remove":
            await self.engine.stop(action.container_id, grace=self.cfg.service.stop_timeout)
            await self.engine.remove(action.container_id)
        elif action.verb == "rename":
            assert action.new_name is not None
            grace = self.cfg.service.stop_timeout
            if await rename_blue(self.engine, action.container_id, action.new_name, grace=grace):
                # Stopped out of its restart loop to be renamed: it ran, and runs again.
                await self.engine.start(action.container_id)
        elif action.verb == "start":
            await self.engine.start(action.container_id)
        elif action.verb == "restart":
            await self.engine.stop(action.container_id, grace=self.cfg.service.stop_timeout)
            await self.engine.start(action.container_id)
        self.said(action.describe())


async def recover(
    cfg: Config,
    *,
    engine: Engine | None = None,
    firewall: Firewall | None = None,
    http: aiohttp.ClientSession | None = None,
) -> RecoveryReport:
    """Bring the service to one healthy production container and no leftovers.

    Every run is written to the audit log.
    """
    began, attempt = time.monotonic(), Attempt(id=uuid.uuid4().hex[:12], kind="recover")
    report: RecoveryReport | None = None
    error: BaseException | None = None
    try:
        report = await _recover(cfg, engine, firewall or LocalFirewall(), http)
        return report
    except BaseException as exc:
        error = exc
        raise
    finally:
        entry = attempt.entry(
            cfg.service.name,
            Outcome.RECOVERED if error is None else Outcome.RECOVERY_FAILED,
            reason=report.outcome if report else str(error) if error else None,
            seconds=time.monotonic() - began,
        )
        history_append(cfg.state_dir, entry)
        write_metrics(cfg)


async def unfinished(cfg: Config, docker: Engine, journal: Journal | None) -> JournalRecord | None:
    """The deploy that did not finish: its journal here, else the mark it left on the engine
    (kept in another state directory); refused while that deploy's process still runs."""
    service = cfg.service.name
    record = journal.record if journal else None
    mark = await docker.read_marker(marker_name(service))
    if mark is not None and (record is None or mark.get(LABEL_DEPLOY) != record.deploy_id):
        if marker_holder_alive(mark):
            # A deploy from another checkout (another state dir) is running.
            raise refuse_marked(mark, service)
        if record is None:
            record = record_from_marker(mark, service)
    return record


async def preview(cfg: Config, docker: Engine, firewall: Firewall) -> dict[str, Any] | None:
    """What ``recover`` would do now where a deploy did not finish (``None``: none to finish)."""
    journal = Journal.load(Journal.path_for(cfg.state_dir))
    record = await unfinished(cfg, docker, journal)
    if record is None:
        return None
    redirected = await PortHandoff.of(firewall, cfg.service).target() is not None
    decided = await decide(cfg, docker, record, redirected=redirected)
    return {
        "unfinished": journal.describe() if journal else f"deploy {record.deploy_id}",
        "actions": decided.lines(cfg.service.port),
        "outcome": decided.outcome,
    }


async def _recover(
    cfg: Config, engine: Engine | None, firewall: Firewall, http: aiohttp.ClientSession | None
) -> RecoveryReport:
    log = structlog.get_logger()
    service = cfg.service.name
    with service_lock(cfg.state_dir, service, purpose="recover", deploy_id="-"):
        journal = Journal.load(Journal.path_for(cfg.state_dir))
        async with open_engine(engine, cfg.engine) as docker, open_http(http) as http:
            record = await unfinished(cfg, docker, journal)
            if record is not None:
                log.info(
                    "recover.unfinished",
                    deploy=journal.describe() if journal else f"deploy {record.deploy_id}",
                )
            handoff = PortHandoff.of(firewall, cfg.service)
            redirected = await handoff.target() is not None
            plan = await decide(cfg, docker, record, redirected=redirected)
            carrying = _Carrying(cfg, docker)
            outcome = plan.outcome

            async def act(action: Action) -> None:
                await carrying.act(action)
                if action.green and cfg.switch.mode == "handoff":
                    await handoff.forget(cfg.service.green_port)

            if plan.hand_over:
                await _hand_over(cfg, http, handoff, plan, carrying)
            redirected = plan.redirected
            try:
                for action in plan.actions:
                    if not action.last:
                        await act(action)
                if await docker.inspect(service) is None:
                    outcome = "no production container exists (there was none before this deploy)"
                else:
                    # Probed past the redirect (the session's sockets are marked, or
                    # on a remote host, through the bypass port).
                    port = handoff.probe_port(cfg.service.port, redirected=redirected)
                    await _await_serving(cfg, http, plan.baseline, port)
                if redirected:
                    # Only now: never remove the redirect while nothing else serves.
                    await handoff.release()
                    carrying.said(f"removed the redirect of port {cfg.service.port} to green")
                for action in plan.actions:
                    if action.last:
                        await act(action)
            except EngineError as exc:
                done = "; ".join(carrying.done) or "nothing"
                raise RecoveryFailed(f"{exc} (done so far: {done})") from exc
            with anyio.move_on_after(MARK_LIMIT, shield=True):
                await docker.remove_marker(marker_name(service))
        if journal is not None:
            journal.remove()
    log.info("recover.done", outcome=outcome, actions=len(carrying.done))
    return RecoveryReport(
        outcome=outcome,
        actions=carrying.done,
        unfinished=(
            journal.describe() if journal else f"deploy {record.deploy_id}" if record else None
        ),
    )


def handed_over(port: int) -> str:
    return f"redirected port {port} to green while production is replaced"


async def _hand_over(
    cfg: Config,
    http: aiohttp.ClientSession,
    handoff: PortHandoff,
    plan: RecoveryPlan,
    carrying: _Carrying,
) -> None:
    """Production's port to green before the running production container goes, where the
    firewall can and green answers; else the plan goes on without it, saying why."""
    why = await handoff.firewall.unavailable()
    if why is None:
        answer = await probe(
            http, cfg.service.url(cfg.service.green_port, cfg.health.path), cfg.health
        )
        why = None if answer.status is not None else f"green does not answer ({answer.describe()})"
    if why is not None:
        structlog.get_logger().warning("recover.no_handoff", why=why)
        plan.hand_over = plan.redirected = False
        return
    await handoff.to_green()
    carrying.said(handed_over(cfg.service.port))


async def _await_serving(
    cfg: Config, http: aiohttp.ClientSession, baseline: HealthBaseline | None, port: int
) -> None:
    """Production answers healthily on ``port``, or (blue brought back) as healthily as it
    was found."""
    url = cfg.service.url(port, cfg.health.path)
    why = await await_serving(http, url, cfg.health, cfg.verify, baseline=baseline)
    if why is not None:
        raise RecoveryFailed(
            f"{cfg.service.name} does not answer healthily within {cfg.verify.timeout:g}s: {why}"
        )
