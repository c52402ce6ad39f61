"""Durable state of a service's deploys: the lock, and the journal of the one under way.

Both live in the state directory (``state.dir``), one pair per service:

- ``<service>.lock`` is held with ``flock`` for the whole deploy or recovery.
  The kernel drops it when the holder dies, even by SIGKILL, so a lock is
  never stale; the file also names its holder for the message a second
  deploy prints.
- ``<service>.journal.json`` is rewritten atomically *before* each action that
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

from ._errors import ConfigError, PreflightError


class DeployLocked(PreflightError):
    """Another deploy or recovery of the same service holds the lock."""


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
    committed: bool = False


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
    def path_for(cls, state_dir: Path, service: str) -> Path:
        return state_dir / f"{service}.journal.json"

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
        cls, state_dir: Path, *, deploy_id: str, service: str, image: str, version: str
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
        state_dir.mkdir(parents=True, exist_ok=True)
        journal = cls(cls.path_for(state_dir, service), record)
        journal.write()
        return journal

    def write(self) -> None:
        _write_atomically(self.path, self.record.model_dump_json(indent=2) + "\n")

    def update(self, **facts: Any) -> None:
        self.record = self.record.model_copy(update=facts)
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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def service_lock(state_dir: Path, service: str, *, purpose: str, deploy_id: str) -> Iterator[None]:
    """Hold the service's lock for the block, or raise :class:`DeployLocked` at once."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / f"{service}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot use the state directory: {exc.strerror}",
            source=str(state_dir),
            key="state.dir",
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DeployLocked(f"{service} is locked by {_holder(fd)}; try again later") from None
        previous = _read_holder(fd)
        if previous:
            # A clean holder empties the file on release: this one died holding it.
            structlog.get_logger().warning(
                "lock.taken_over",
                previous_pid=previous.get("pid"),
                previous_since=previous.get("since"),
                alive=_pid_alive(int(previous.get("pid", 0))),
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


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _holder(fd: int) -> str:
    h = _read_holder(fd)
    if not h:
        return "another process"
    who = f"{h.get('purpose', 'a deploy')} {h.get('deploy_id', '')}"
    return f"{who} (pid {h.get('pid')} on {h.get('host')}) since {h.get('since')}"
