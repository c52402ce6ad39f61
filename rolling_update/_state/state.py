"""Durable state of a service's deploys: the lock, and the journal of the one under way.

Both live in the service's own directory on the host (``state.dir/<service>``,
by default ``/var/lib/rolling-update/<service>``), never beside a checkout's
config, so every checkout and CI job on the host sees the same state:

- ``lock`` is held with ``flock`` for the whole deploy or recovery.
  The kernel drops it when the holder dies, even by SIGKILL, so a lock is
  never stale; the file also names its holder for the message a second
  deploy prints.
- ``journal.json`` is rewritten atomically *before* each action that
  changes the host (before each step, before blue is renamed, at the point of
  no return), and removed when the deploy ends cleanly. A journal that
  outlives its process is an unfinished deploy: ``recover`` reads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import structlog
from pydantic import BaseModel, ConfigDict

from rolling_update._engine.docker import (
    LABEL_DEPLOY,
    LABEL_IMAGE,
    LABEL_MARKER_HOST,
    LABEL_MARKER_PID,
    LABEL_MARKER_SINCE,
    LABEL_SERVICE,
    LABEL_VERSION,
)
from rolling_update._errors import ConfigError, DeployLocked, PreflightError
from rolling_update._watch.probe import HealthBaseline

MARK_LIMIT = 10.0
"""Seconds for removing a journal and an engine mark at the end: quick, bounded all the same."""


class JournalRecord(BaseModel):
    """What a recovery needs to know of a deploy that did not finish."""

    model_config = ConfigDict(extra="ignore")

    deploy_id: str
    service: str
    image: str
    version: str
    pid: int
    host: str
    started_at: str
    step: str | None = None
    blue_id: str | None = None
    blue_was_running: bool = False
    blue_health: HealthBaseline | None = None
    """Blue's health as the deploy found it: what bringing it back must reach."""
    committed: bool = False
    blue_bootable: bool | None = None
    """Whether blue's image passed ``migrate.blue_check`` on the migrated schema."""
    redirect: bool = False
    """The handoff's nftables redirect may be in place (set before it is installed)."""


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename itself must survive a power cut too.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Journal:
    """The on-disk record of one deploy, kept current before each action."""

    def __init__(self, path: Path, record: JournalRecord) -> None:
        self.path = path
        self.record = record

    @classmethod
    def path_for(cls, service_dir: Path) -> Path:
        return service_dir / "journal.json"

    @classmethod
    def load(cls, path: Path) -> Journal | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read journal: {exc.strerror}", source=str(path)) from None
        try:
            return cls(path, JournalRecord.model_validate_json(text))
        except pydantic.ValidationError:
            raise ConfigError(
                "journal is unreadable; inspect the containers, then delete it", source=str(path)
            ) from None

    @classmethod
    def begin(
        cls, service_dir: Path, *, deploy_id: str, service: str, image: str, version: str
    ) -> Journal:
        record = JournalRecord(
            deploy_id=deploy_id,
            service=service,
            image=image,
            version=version,
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=_now(),
        )
        service_dir.mkdir(parents=True, exist_ok=True)
        journal = cls(cls.path_for(service_dir), record)
        journal.write()
        return journal

    def write(self) -> None:
        _write_atomically(self.path, self.record.model_dump_json(indent=2) + "\n")

    def update(self, **facts: Any) -> None:
        # model_copy would take a misspelt key silently, and recover would
        # later miss the fact it was meant to record.
        unknown = sorted(set(facts) - set(JournalRecord.model_fields))
        if unknown:
            raise TypeError(f"not journal fields: {', '.join(unknown)}")
        self.record = JournalRecord.model_validate({**self.record.model_dump(), **facts})
        self.write()

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def describe(self) -> str:
        r = self.record
        return (
            f"deploy {r.deploy_id} of {r.image} (pid {r.pid} on {r.host}, started {r.started_at}, "
            f"last step {r.step or 'none'}{', verified' if r.committed else ''})"
        )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def service_lock(
    service_dir: Path, service: str, *, purpose: str, deploy_id: str
) -> Iterator[None]:
    """Hold the service's lock for the block, or raise :class:`DeployLocked` at once."""
    try:
        service_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(service_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot use the state directory: {exc.strerror}",
            source=str(service_dir),
            key="state.dir",
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeployLocked(f"{service} is locked by {_holder(fd)}; try again later") from None
        previous = read_holder(fd)
        if previous:
            # A clean holder empties the file on release: this one died holding it.
            structlog.get_logger().warning(
                "lock.taken_over",
                previous_pid=previous.get("pid"),
                previous_since=previous.get("since"),
                alive=pid_alive(int(previous.get("pid", 0))),
            )
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": _now(),
            "purpose": purpose,
            "deploy_id": deploy_id,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _holder(fd: int) -> str:
    h = read_holder(fd)
    if not h:
        return "another process"
    who = f"{h.get('purpose', 'a deploy')} {h.get('deploy_id', '')}"
    return f"{who} (pid {h.get('pid')} on {h.get('host')}) since {h.get('since')}"


def marker_name(service: str) -> str:
    """The engine-side mark of a deploy under way: a volume, since volumes carry labels."""
    return f"rolling-update.{service}.deploy"


def marker_labels(*, service: str, deploy_id: str, image: str, version: str) -> dict[str, str]:
    return {
        LABEL_SERVICE: service,
        LABEL_DEPLOY: deploy_id,
        LABEL_VERSION: version,
        LABEL_IMAGE: image,
        LABEL_MARKER_PID: str(os.getpid()),
        LABEL_MARKER_HOST: socket.gethostname(),
        LABEL_MARKER_SINCE: _now(),
    }


def describe_marker(labels: dict[str, str]) -> str:
    return (
        f"deploy {labels.get(LABEL_DEPLOY, '?')} of {labels.get(LABEL_IMAGE, '?')} "
        f"(pid {labels.get(LABEL_MARKER_PID, '?')} on {labels.get(LABEL_MARKER_HOST, '?')}, "
        f"started {labels.get(LABEL_MARKER_SINCE, '?')}, marked on the Docker engine)"
    )


def marker_holder_alive(labels: dict[str, str]) -> bool:
    """Whether the process that marked the engine still runs (on this host)."""
    if labels.get(LABEL_MARKER_HOST) != socket.gethostname():
        # Another host's process cannot be checked from here: assume it runs.
        return True
    pid = labels.get(LABEL_MARKER_PID, "")
    return pid.isdigit() and pid_alive(int(pid))


def refuse_marked(labels: dict[str, str], service: str) -> PreflightError:
    """The error for a service the engine says another deploy has under way."""
    if marker_holder_alive(labels):
        return DeployLocked(f"{service} is locked by {describe_marker(labels)}; try again later")
    return PreflightError(
        f"an unfinished {describe_marker(labels)} was interrupted; "
        "run `rolling-update recover` first"
    )


def refuse_unfinished(state_dir: Path) -> None:
    """Raise :class:`PreflightError` if a deploy's journal here says it was interrupted."""
    unfinished = Journal.load(Journal.path_for(state_dir))
    if unfinished is not None:
        raise PreflightError(
            f"an unfinished {unfinished.describe()} was interrupted; "
            "run `rolling-update recover` first"
        )


def record_from_marker(labels: dict[str, str], service: str) -> JournalRecord:
    """What a recovery can know of a marked deploy whose journal is elsewhere (or gone)."""
    pid = labels.get(LABEL_MARKER_PID, "0")
    return JournalRecord(
        deploy_id=labels.get(LABEL_DEPLOY, "unknown"),
        service=service,
        image=labels.get(LABEL_IMAGE, "unknown"),
        version=labels.get(LABEL_VERSION, "unknown"),
        pid=int(pid) if pid.isdigit() else 0,
        host=labels.get(LABEL_MARKER_HOST, "unknown"),
        started_at=labels.get(LABEL_MARKER_SINCE, "unknown"),
    )
