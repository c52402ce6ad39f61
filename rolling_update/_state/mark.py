"""The engine mark: a volume named for the service whose labels say which deploy runs.

Volume creation is atomic by name, so the mark is also a lock across checkouts
and state directories; ``recover`` can work from the mark alone.
"""

from __future__ import annotations

import os
import socket

from rolling_update._engine.model import (
    LABEL_DEPLOY,
    LABEL_IMAGE,
    LABEL_MARKER_HOST,
    LABEL_MARKER_PID,
    LABEL_MARKER_SINCE,
    LABEL_SERVICE,
    LABEL_VERSION,
)
from rolling_update._errors import DeployLocked, PreflightError
from rolling_update._state.journal import JournalRecord, now_iso
from rolling_update._state.lock import pid_alive

MARK_LIMIT = 10.0
"""Seconds for removing a journal and an engine mark at the end: quick, bounded all the same."""


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
        LABEL_MARKER_SINCE: now_iso(),
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
