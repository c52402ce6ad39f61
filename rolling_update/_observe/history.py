"""The audit log: one JSON line per deploy, rollback and recover of a service on this host.

It lives beside the lock and journal (``state.dir/<service>/history.jsonl``),
is only ever appended to, and each line is fsynced before the command
returns, so ``history`` and ``status`` see every run, even one that crashed
right after. Metrics (``[metrics] textfile``) are computed from it.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pydantic
import structlog
from pydantic import BaseModel, ConfigDict

from rolling_update._deploy.outcome import Outcome
from rolling_update._errors import StateWriteFailed
from rolling_update._observe.logs import redactor

Kind = Literal["deploy", "rollback", "recover"]


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    kind: Kind
    service: str
    started_at: str
    ended_at: str
    user: str
    host: str
    from_version: str | None = None
    to_version: str | None = None
    result: Outcome
    reason: str | None = None
    seconds: float = 0.0
    measured: dict[str, Any] = {}
    timeline: dict[str, Any] | None = None
    """What ran when (see :mod:`rolling_update._observe.timeline`); deploys and rollbacks only."""


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def host() -> str:
    return socket.gethostname()


def path_for(service_dir: Path) -> Path:
    return service_dir / "history.jsonl"


def append(service_dir: Path, entry: HistoryEntry) -> bool:
    """Add ``entry`` durably (one line, fsynced); whether it was. A failure (a full disk)
    is logged, naming the file, never raised: the audit log must not change how a run
    ended, and the file is left as it was, every earlier line intact."""
    try:
        _append(service_dir, entry)
    except OSError as exc:
        structlog.get_logger().warning(
            "history.not_written",
            error=str(StateWriteFailed("audit log", str(path_for(service_dir)), exc)),
        )
        return False
    return True


def _append(service_dir: Path, entry: HistoryEntry) -> None:
    service_dir.mkdir(parents=True, exist_ok=True)
    line = entry.model_dump_json() + "\n"
    fd = os.open(path_for(service_dir), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, line.encode()) < len(line.encode()):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError:
            # A line cut short (a full disk) would swallow the next one appended.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read(service_dir: Path, limit: int | None = None) -> list[HistoryEntry]:
    """The entries, oldest first (the last ``limit`` of them); unreadable lines are skipped."""
    try:
        lines = path_for(service_dir).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for line in lines:
        try:
            entries.append(HistoryEntry.model_validate_json(line))
        except pydantic.ValidationError:
            continue
    return entries[-limit:] if limit else entries


@dataclass
class Attempt:
    """What the audit log records of one deploy, filled in as it goes."""

    id: str
    kind: Kind
    started_at: str = field(default_factory=now)
    from_version: str | None = None
    to_version: str | None = None
    measured: dict[str, Any] = field(default_factory=dict)
    timeline: dict[str, Any] | None = None

    def entry(
        self, service: str, result: Outcome, *, reason: str | None, seconds: float
    ) -> HistoryEntry:
        """The audit log's line for this run, ended now with ``result`` (secrets blanked)."""
        return HistoryEntry(
            id=self.id,
            kind=self.kind,
            service=service,
            started_at=self.started_at,
            ended_at=now(),
            user=who(),
            host=host(),
            from_version=self.from_version,
            to_version=self.to_version,
            result=result,
            reason=redactor.scrub(reason),
            seconds=round(seconds, 3),
            measured=redactor.scrub(self.measured),
            timeline=self.timeline,
        )
