"""HTTP probes of the service, and pure parsers of what it answers.

A probe never raises for the service's misbehaviour (refused, slow, huge,
not JSON): it returns an :class:`Answer` saying what happened, and the
caller's judgement (:func:`judge_health`, :func:`parse_tick`) decides. Only
cancellation passes through.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urljoin

import aiohttp
import anyio
from pydantic import BaseModel, ConfigDict

from rolling_update._config.settings import HealthConfig
from rolling_update._observe.logs import redactor

_MISSING = object()


@dataclass(frozen=True)
class Answer:
    """One probe's outcome: an HTTP status and parsed JSON body, or an error."""

    url: str
    status: int | None = None
    body: Any = None
    error: str | None = None

    def describe(self, limit: int = 300) -> str:
        if self.error is not None:
            return self.error
        text = json.dumps(self.body, separators=(",", ":"), default=str)
        if len(text) > limit:
            text = text[:limit] + "…"
        # Answers are the service's words: they may quote its own secrets.
        return str(redactor.scrub(f"HTTP {self.status} {text}"))


async def probe(session: aiohttp.ClientSession, url: str, rule: HealthConfig) -> Answer:
    """GET ``url`` and parse its JSON body, within ``rule``'s request time and size limits.

    A probe that runs out of time is an answer ("no answer within ..."), not
    an error: the caller's own deadline bounds the whole wait.
    """
    timeout, max_bytes = rule.request_timeout, rule.max_body_bytes
    try:
        with anyio.fail_after(timeout):
            async with session.get(url, allow_redirects=False) as response:
                raw = await _read_up_to(response, max_bytes + 1)
                status = response.status
    except TimeoutError:
        return Answer(url, error=f"no answer within {timeout:g}s")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        return Answer(url, error=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if len(raw) > max_bytes:
        return Answer(url, status=status, error=f"HTTP {status} body larger than {max_bytes} bytes")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return Answer(url, status=status, error=f"HTTP {status} body is not JSON")
    return Answer(url, status=status, body=body)


async def _read_up_to(response: aiohttp.ClientResponse, limit: int) -> bytes:
    # One read() returns what has arrived, which for a body sent in several
    # writes (chunked) is only its first part.
    raw = bytearray()
    while len(raw) < limit:
        chunk = await response.content.read(limit - len(raw))
        if not chunk:
            break
        raw += chunk
    return bytes(raw)


unprobeable_ports: set[str] = set()
"""Addresses whose ports are forwarded over SSH: a forward accepts whatever listens
behind it, so a connection there says nothing about the port."""


async def port_in_use(host: str, port: int) -> bool:
    """Whether something already accepts connections on ``host:port``."""
    if host in unprobeable_ports:
        return False
    try:
        with anyio.fail_after(1):
            stream = await anyio.connect_tcp(host, port)
    except (OSError, TimeoutError):
        return False
    await stream.aclose()
    return True


def dotted(body: Any, path: str) -> Any:
    """``body["a"]["b"]`` for ``"a.b"``; ``_MISSING`` where any part is absent."""
    node = body
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def judge_health(
    answer: Answer, rule: HealthConfig, expect_version: str | None = None
) -> str | None:
    """``None`` when ``answer`` is healthy under ``rule``; otherwise why not."""
    if answer.error is not None:
        return answer.error
    if answer.status != rule.expect_status:
        return f"HTTP {answer.status}, expected {rule.expect_status}"
    for path, expected in rule.expect_json.items():
        found = dotted(answer.body, path)
        if found is _MISSING:
            return f"{path} missing"
        # bool is an int in Python: True must not pass for 1.
        if found != expected or (type(found) is bool and type(expected) is not bool):
            return f"{path} is {found!r}, expected {expected!r}"
    if not rule.version_path:
        return judge_version(answer, rule, expect_version)
    return None


def judge_version(answer: Answer, rule: HealthConfig, expect_version: str | None) -> str | None:
    """``None`` when ``answer`` carries ``expect_version`` at ``rule.version_field`` (or no
    version is expected); otherwise why not."""
    if expect_version is None or not rule.version_field:
        return None
    if answer.error is not None:
        return f"version unknown: {answer.error}"
    found = dotted(answer.body, rule.version_field)
    if found != expect_version:
        shown = "missing" if found is _MISSING else repr(found)
        return f"{rule.version_field} is {shown}, expected {expect_version!r}"
    return None


class HealthBaseline(BaseModel):
    """How healthy a container was when the deploy found it.

    A hotfix is often deployed *because* blue is degraded, so bringing blue
    back counts as done when it is at least as healthy as it was found: fully
    healthy if it was; else answering with the same HTTP status and the same
    values of the rule's ``expect_json`` fields; anything if it did not answer.
    """

    model_config = ConfigDict(frozen=True)

    healthy: bool
    status: int | None = None
    fields: dict[str, Any] = {}
    found: str = ""
    """What it answered, for messages."""

    @classmethod
    def of(cls, answer: Answer, rule: HealthConfig) -> HealthBaseline:
        healthy = judge_health(answer, rule) is None
        if answer.error is not None and answer.status is None:
            return cls(healthy=False, found=answer.describe())
        fields = {path: dotted(answer.body, path) for path in rule.expect_json}
        return cls(
            healthy=healthy,
            status=answer.status,
            fields={k: v for k, v in fields.items() if v is not _MISSING},
            found=answer.describe(),
        )

    def judge(self, answer: Answer, rule: HealthConfig) -> str | None:
        """``None`` when ``answer`` is at least as healthy as this baseline; else why not."""
        verdict = judge_health(answer, rule)
        if verdict is None or self.healthy:
            return verdict
        if self.status is None:
            return None
        if answer.status != self.status:
            return f"HTTP {answer.status}, and it answered HTTP {self.status} before the deploy"
        for path, before in self.fields.items():
            now = dotted(answer.body, path)
            if now != before:
                shown = "missing" if now is _MISSING else repr(now)
                return f"{path} is {shown}; it was {before!r} before the deploy"
        return None


@dataclass(frozen=True)
class TickStatus:
    tick_running: bool
    next_tick: datetime | None
    loop_running: bool | None = None


def tick_state(status: TickStatus, now: datetime, guard: float, overdue: float) -> str:
    """``running``, ``imminent`` (a tick is due within ``guard`` s, or overdue), ``stale``
    (``next_tick`` lies more than ``overdue`` s in the past) or ``idle``.

    A tick overdue by a little may start at any moment, unless the service says its
    loop is not running at all. One overdue by more is not coming: the Brain's
    ``next_tick`` is the shared database's last tick plus an interval, and several of
    its tick paths return before writing it, so it can lie in the past for hours.
    Then only ``tick_running`` can be trusted.
    """
    if status.tick_running:
        return "running"
    due = status.next_tick
    if due is None or status.loop_running is False:
        return "idle"
    ahead = (due - now).total_seconds()
    if ahead < -overdue:
        return "stale"
    return "imminent" if ahead < guard else "idle"


def parse_tick(answer: Answer) -> TickStatus:
    """Read ``tick_running`` and ``next_tick``; ``ValueError`` saying why when unusable."""
    if answer.error is not None:
        raise ValueError(answer.error)
    if answer.status != 200:
        raise ValueError(f"HTTP {answer.status}")
    body = answer.body
    if not isinstance(body, Mapping) or not isinstance(body.get("tick_running"), bool):
        raise ValueError("tick_running missing or not a boolean")
    next_tick: datetime | None = None
    raw = body.get("next_tick")
    if isinstance(raw, str) and raw:
        try:
            next_tick = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("next_tick is not an ISO 8601 time") from None
        if next_tick.tzinfo is None:
            raise ValueError("next_tick has no time zone")
    loop = body.get("loop_running")
    return TickStatus(
        tick_running=body["tick_running"],
        next_tick=next_tick,
        loop_running=loop if isinstance(loop, bool) else None,
    )


async def check_health(
    http: aiohttp.ClientSession, url: str, rule: HealthConfig, expect_version: str | None
) -> tuple[Answer, str | None]:
    """One health check by ``rule``: the answer at ``url`` and ``None`` when it is healthy
    (carrying ``expect_version``, read from the version endpoint where it has one of its own,
    as the Brain's hardening status), else why not."""
    answer = await probe(http, url, rule)
    verdict = judge_health(answer, rule, expect_version)
    if verdict is None and expect_version is not None and rule.version_path and rule.version_field:
        version = await probe(http, urljoin(url, rule.version_path), rule)
        verdict = judge_version(version, rule, expect_version)
    return answer, verdict
