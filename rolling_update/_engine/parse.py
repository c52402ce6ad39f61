"""Pure parsers of what the Docker engine answers: inspect, events, stats, build and
push/pull streams, and the multiplexed log stream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from rolling_update._engine.model import ContainerEvent, ContainerInfo
from rolling_update._errors import BuildFailed, EngineError


def parse_created(value: str) -> float:
    # The engine gives RFC 3339 with nanoseconds; datetime takes microseconds.
    head, _, frac = value.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(head + "+00:00").timestamp()
    return seconds + (float("0." + frac) if frac else 0.0)


def container_info(data: Mapping[str, Any]) -> ContainerInfo:
    state = data.get("State") or {}
    return ContainerInfo(
        id=data["Id"],
        name=str(data.get("Name", "")).lstrip("/"),
        image=str((data.get("Config") or {}).get("Image", "")),
        running=bool(state.get("Running")),
        status=str(state.get("Status", "")),
        labels=dict((data.get("Config") or {}).get("Labels") or {}),
        restart_count=int(data.get("RestartCount") or 0),
        exit_code=int(state.get("ExitCode") or 0),
        created=parse_created(str(data.get("Created", "1970-01-01T00:00:00Z"))),
        image_id=str(data.get("Image", "")),
        health=(state.get("Health") or {}).get("Status"),
        oom_killed=bool(state.get("OOMKilled")),
        restart=str(
            ((data.get("HostConfig") or {}).get("RestartPolicy") or {}).get("Name") or "no"
        ),
    )


def progress_line(
    raw: bytes, operation: str, ref: str, on_status: Callable[[str], None] | None
) -> None:
    """One line of a push or pull stream: its error raised, its status passed on."""
    try:
        chunk = json.loads(raw)
    except ValueError:
        return
    if not isinstance(chunk, dict):
        return
    if "error" in chunk:
        detail = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
        raise EngineError(operation, ref, 500, str(detail).strip())
    status = chunk.get("status")
    if on_status is not None and isinstance(status, str) and "progress" not in chunk:
        on_status(f"{chunk.get('id', '')}: {status}".lstrip(": "))


# The classic builder colours a step's stderr (ESC[91m ... ESC[0m): not text of the line.
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def build_output(raw: bytes, tag: str) -> list[str]:
    """The printable lines of one line of the engine's build stream.

    Raises :class:`BuildFailed` on the stream's own error object.
    """
    try:
        chunk = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(chunk, dict):
        return []
    if "error" in chunk:
        detail = (chunk.get("errorDetail") or {}).get("message") or chunk["error"]
        raise BuildFailed(f"build of {tag} failed: {str(detail).strip()}")
    text = chunk.get("stream")
    if not isinstance(text, str):
        return []
    text = _COLOUR.sub("", text)
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def memory_in_use(raw: bytes) -> int | None:
    """Memory in use from one stats sample, as ``docker stats`` counts it (without page cache)."""
    try:
        memory = json.loads(raw).get("memory_stats") or {}
    except (ValueError, AttributeError):
        return None
    usage = memory.get("usage")
    if not isinstance(usage, int):
        return None
    stats = memory.get("stats") or {}
    # cgroup v1 names it total_inactive_file, v2 inactive_file.
    cache = stats.get("total_inactive_file", stats.get("inactive_file", 0))
    return usage - cache if isinstance(cache, int) and cache < usage else usage


def parse_event(raw: bytes) -> ContainerEvent | None:
    """One line of the engine's event stream; ``None`` for blank or foreign lines."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("Type") != "container":
        return None
    attributes = (data.get("Actor") or {}).get("Attributes") or {}
    code = attributes.get("exitCode")
    return ContainerEvent(
        action=str(data.get("Action") or data.get("status") or "").split(":")[0],
        container_id=str(data.get("id") or (data.get("Actor") or {}).get("ID") or ""),
        time_nano=int(data.get("timeNano") or 0),
        exit_code=int(code) if isinstance(code, str) and code.lstrip("-").isdigit() else None,
    )


class FrameDecoder:
    """Splits Docker's multiplexed log stream (8-byte header per frame) into payloads."""

    def __init__(self, *, raw: bool = False) -> None:
        self._raw = raw
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._raw:
            return [chunk]
        self._buffer += chunk
        payloads = []
        while len(self._buffer) >= 8:
            size = int.from_bytes(self._buffer[4:8], "big")
            if len(self._buffer) < 8 + size:
                break
            payloads.append(self._buffer[8 : 8 + size])
            self._buffer = self._buffer[8 + size :]
        return payloads


class LineSplitter:
    """Turns arbitrary byte chunks into complete, decoded lines."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[str]:
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        rest, self._partial = self._partial, b""
        return [rest.decode("utf-8", "replace")] if rest else []
