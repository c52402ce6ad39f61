"""structlog set-up: a human console, or one JSON object per line for journald.

Configured once, by the CLI (or a Python caller) through :func:`configure`;
everything else calls ``structlog.get_logger()``.

Secrets are blanked in two places. At the source: container and build lines,
probe answers and error messages are scrubbed before they are logged or
raised, so a Python caller with a logging set-up of its own gets them
blanked too. And after rendering, with ours: a traceback formatted from
``log.exception`` is scrubbed as well.

Which values are secret (:func:`secret_values`): those of env and build-arg
keys that look secret by name (a word such as PASSWORD, TOKEN, SECRET, KEY,
CREDENTIALS, AUTH), of keys listed in ``[secrets] keys``, and the userinfo of
any URL value (``postgres://user:pw@db``); never those of keys listed in
``[secrets] public``. Names such as the database or the service are not
secrets, so they are never blanked.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

import structlog
from structlog.typing import EventDict, WrappedLogger

LogFormat = Literal["console", "json"]

# Shorter values (true, 3600) are too common to blank without garbling
# ordinary output; the tool itself never prints env values of any length.
_MIN_SECRET = 6
_REDACTED = "***"


_SECRET_WORDS = {
    "password",
    "passwd",
    "pass",
    "pwd",
    "passphrase",
    "secret",
    "secrets",
    "token",
    "tokens",
    "key",
    "apikey",
    "credential",
    "credentials",
    "auth",
    "private",
    "cookie",
    "session",
    "signature",
    "salt",
    "dsn",
}
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def looks_secret(key: str) -> bool:
    """Whether an env or build-arg name says its value is a secret (DB_PASSWORD, apiToken)."""
    return any(word.lower() in _SECRET_WORDS for word in _WORD.findall(key))


def secret_values(
    env: Mapping[str, str], *, extra: Iterable[str] = (), public: Iterable[str] = ()
) -> list[str]:
    """The values of ``env`` that are secrets under the rule in the module docstring."""
    extra, public = set(extra), set(public)
    found = []
    for key, value in env.items():
        if key in public:
            continue
        if key in extra or looks_secret(key):
            found.append(value)
            continue
        if "://" in value:
            try:
                parts = urlsplit(value)
            except ValueError:
                continue
            if parts.password:
                found += [parts.password, parts.netloc.rpartition("@")[0]]
    return found


class Redactor:
    """A structlog processor that replaces registered secret values by ``***``."""

    def __init__(self) -> None:
        self._secrets: list[str] = []

    def add(self, values: Iterable[str]) -> None:
        known = set(self._secrets)
        for value in values:
            if len(value) >= _MIN_SECRET:
                # Also as it appears inside a JSON string, for rendered output.
                known.update({value, json.dumps(value, ensure_ascii=False)[1:-1]})
        # Longest first, so a secret containing another is blanked whole.
        self._secrets = sorted(known, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, _REDACTED)
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        if not self._secrets:
            return event_dict
        return {k: self.scrub(v) for k, v in event_dict.items()}

    def rendered(self, renderer: Any) -> Any:
        """Wrap the final renderer so that its output (tracebacks included) is scrubbed too."""

        def render(logger: WrappedLogger, name: str, event_dict: EventDict) -> Any:
            return self.scrub(renderer(logger, name, event_dict))

        return render


redactor = Redactor()


def register_secrets(values: Iterable[str]) -> None:
    """Never log these values (env values read from config and env files)."""
    redactor.add(values)


class ConsoleRenderer:
    """Renders deploy events the way an operator reads a deploy script's output."""

    def __init__(self) -> None:
        self._plain = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        event = event_dict.get("event")
        ev: MutableMapping[str, Any] = event_dict
        if event == "deploy.step.started":
            return f"[{ev['index']}/{ev['total']}] {ev['title']}..."
        if event == "deploy.step.done":
            return f"✅ {ev['title']} ({ev['seconds']:.1f}s)"
        if event == "deploy.step.failed":
            return f"❌ {ev.get('step')}: {ev.get('error')}"
        if event == "deploy.rollback.done":
            return f"↩️  Rolled back: undid {', '.join(ev.get('undone') or [])}"
        if event in ("container.log", "build.log"):
            return (
                f"   │ {ev.get('container', '')}{': ' if ev.get('container') else ''}{ev['line']}"
            )
        if event == "deploy.done":
            health = json.dumps(ev.get("health"), indent=2, ensure_ascii=False)
            summary = ", ".join(f"{k}={v}" for k, v in (ev.get("measured") or {}).items())
            took = f"{ev.get('seconds', 0):.1f}s"
            return f"🎉 Deployed {ev.get('image')} in {took} ({summary})\n{health}"
        for key in ("timestamp", "deploy_id"):
            ev.pop(key, None)
        level = ev.pop("level", "info")
        prefix = {"warning": "⚠️  ", "error": "❌ ", "critical": "❌ "}.get(level, "   ")
        return prefix + str(self._plain(logger, name, ev))


def configure(fmt: LogFormat = "console", stream: TextIO | None = None) -> None:
    """Configure structlog for the whole process."""
    out = stream if stream is not None else sys.stdout
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redactor,
    ]
    if fmt == "json":
        processors += [
            structlog.processors.format_exc_info,
            redactor.rendered(structlog.processors.JSONRenderer(ensure_ascii=False)),
        ]
    else:
        processors.append(redactor.rendered(ConsoleRenderer()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
