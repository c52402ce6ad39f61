"""The journal of the deploy under way: ``state.dir/<service>/journal.json``.

It lives in the service's own directory on the host (by default
``/var/lib/rolling-update/<service>``), never beside a checkout's config, so every
checkout and CI job on the host sees it. It is rewritten atomically *before* each
action that changes the host (before each step, before blue is renamed, at the
point of no return), and removed when the deploy ends cleanly. A journal that
outlives its process is an unfinished deploy: ``recover`` reads it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import structlog
from pydantic import BaseModel, ConfigDict

from rolling_update._errors import ConfigError, PreflightError, StateWriteFailed
from rolling_update._watch.probe import HealthBaseline


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
    shift_share: int | None = None
    """The gradual shift's share of new connections sent to green (set before each change;
    ``redirect`` is set with the first)."""
    blue_told_to_drain: bool = False
    """``switch.drain_signal`` or ``drain_request`` may have reached blue (set before): a
    blue kept running would go on closing its connections, so bringing it back restarts it."""


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # A half-written copy (a full disk) must not linger beside the journal it failed to be.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The rename itself must survive a power cut too.
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Journal:
    """The on-disk record of one deploy, kept current before each action."""

    def __init__(self, path: Path, record: JournalRecord) -> None:
        self.path = path
        self.record = record
        self.forgiving: Callable[[], bool] = lambda: False
        """Whether a failed write is only logged: during a rollback, an undo must go on
        when its record cannot be written (a full disk), or the port it would bring back
        stays dark; the journal on disk then lags, and is removed once the rollback ends."""

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
            started_at=now_iso(),
        )
        service_dir.mkdir(parents=True, exist_ok=True)
        journal = cls(cls.path_for(service_dir), record)
        journal.write()
        return journal

    def write(self) -> None:
        """Write the record, or raise :class:`StateWriteFailed` (unless ``forgiving``)."""
        try:
            _write_atomically(self.path, self.record.model_dump_json(indent=2) + "\n")
        except OSError as exc:
            failed = StateWriteFailed("journal", str(self.path), exc)
            if not self.forgiving():
                raise failed from exc
            structlog.get_logger().warning(
                "journal.not_written", path=str(self.path), error=str(failed)
            )

    def update(self, **facts: Any) -> None:
        # model_copy would take a misspelt key silently, and recover would
        # later miss the fact it was meant to record.
        unknown = sorted(set(facts) - set(JournalRecord.model_fields))
        if unknown:
            raise TypeError(f"not journal fields: {', '.join(unknown)}")
        before = self.record
        self.record = JournalRecord.model_validate({**before.model_dump(), **facts})
        try:
            self.write()
        except BaseException:
            # Raised (not forgiven): the facts are not recorded, and a later write must not
            # record them either (a commit whose write failed rolls back, uncommitted).
            self.record = before
            raise

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def describe(self) -> str:
        r = self.record
        return (
            f"deploy {r.deploy_id} of {r.image} (pid {r.pid} on {r.host}, started {r.started_at}, "
            f"last step {r.step or 'none'}{', verified' if r.committed else ''}"
            f"{f', {r.shift_share}% shifted to green' if r.shift_share else ''})"
        )


def refuse_unfinished(state_dir: Path) -> None:
    """Raise :class:`PreflightError` if a deploy's journal here says it was interrupted."""
    unfinished = Journal.load(Journal.path_for(state_dir))
    if unfinished is not None:
        raise PreflightError(
            f"an unfinished {unfinished.describe()} was interrupted; "
            "run `rolling-update recover` first"
        )
