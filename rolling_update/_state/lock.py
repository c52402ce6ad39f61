"""The service's lock: ``flock`` on ``state.dir/<service>/lock`` for a whole deploy or recovery.

The kernel drops it when the holder dies, even by SIGKILL, so a lock is never
stale; the file also names its holder for the message a second deploy prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from rolling_update._errors import ConfigError, DeployLocked, StateWriteFailed
from rolling_update._state.journal import now_iso


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
            "since": now_iso(),
            "purpose": purpose,
            "deploy_id": deploy_id,
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError as exc:
            raise StateWriteFailed("lock", str(service_dir / "lock"), exc) from None
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
