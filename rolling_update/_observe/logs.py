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

import array
import errno
import fcntl
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Literal, TextIO
from urllib.parse import urlsplit

import structlog
from rich.console import Console
from structlog.typing import EventDict, WrappedLogger

from rolling_update._deploy.outcome import Outcome
from rolling_update._observe.progress import use_terminal
from rolling_update._observe.timeline import render as render_timeline

LogFormat = Literal["console", "json", "journald"]
JOURNAL_SOCKET = "/run/systemd/journal/socket"

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
    """The values of ``env`` that are secrets under the rule in the module docstring.

    A secret key's value that is also the value of an ordinary key (a database
    password equal to its user name) is no secret: the ordinary key shows it anyway,
    and blanking it would blank that name wherever it appears (an image called
    after it). It is left out, with a warning naming both keys, never the value.
    """
    extra, public = set(extra), set(public)
    secret_keys = [k for k in env if k not in public and (k in extra or looks_secret(k))]
    ordinary = {value: key for key, value in env.items() if key not in secret_keys and value}
    found = []
    for key, value in env.items():
        if key in public:
            continue
        if key in secret_keys:
            if value in ordinary:
                structlog.get_logger().warning(
                    "secrets.not_secret",
                    key=key,
                    same_as=ordinary[value],
                    why=f"{key}'s value is also {ordinary[value]}'s, an ordinary value: "
                    "it is not blanked (choose a password of its own)",
                )
                continue
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
        # With several hosts every line says which one it is about.
        host = event_dict.pop("host", None)
        line = self._render(logger, name, event_dict)
        return f"[{host}] {line}" if host else line

    def _render(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        event = event_dict.get("event")
        ev: MutableMapping[str, Any] = event_dict
        if event == "deploy.step.started":
            return f"[{ev['index']}/{ev['total']}] {ev['title']}..."
        if event == "deploy.step.done":
            return f"✅ {ev['title']} ({ev['seconds']:.1f}s)"
        if event == "deploy.step.failed":
            return f"❌ {ev.get('step')}: {ev.get('error')}"
        if event == "deploy.timeline" and isinstance(ev.get("timeline"), Mapping):
            return render_timeline(ev["timeline"])
        if event == "deploy.rollback.done":
            return f"↩️  Rolled back: undid {', '.join(ev.get('undone') or [])}"
        if event in ("container.log", "build.log", "hook.log"):
            # Builds and migrations run long: each line says how long they have run.
            took = f"[{ev['elapsed']:>5.1f}s] " if isinstance(ev.get("elapsed"), float) else ""
            who = ev.get("container") or ev.get("hook") or ""
            return f"   │ {took}{who}{': ' if who else ''}{ev['line']}"
        if event == "image.copying":
            sent = f"{ev.get('mb')} MB sent ({ev.get('mb_per_s')} MB/s)"
            return f"   ⇢ image {ev.get('image')}: {sent}"
        if event == "rollout.host":
            mark = "✅" if ev.get("result") == Outcome.DEPLOYED else "❌"
            why = f": {ev['reason']}" if ev.get("reason") else ""
            return f"{mark} {ev.get('result')}{why}"
        if event == "rollout.summary":
            hosts = ev.get("hosts") or []
            return "🏁 " + ", ".join(f"{h.get('host')}: {h.get('result')}" for h in hosts)
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


_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}
# Our fields, so that `journalctl DEPLOY_ID=...` finds a deploy's every line.
_NOT_IN_MESSAGE = ("event", "level", "timestamp")
_JOURNAL_FIELDS = ("deploy_id", "step", "event", "service", "version", "container", "host")


def journal_entry(event_dict: EventDict) -> bytes:
    """One journald native-protocol entry: KEY=value lines; binary-safe form for newlines."""
    fields: dict[str, str] = {
        "MESSAGE": " ".join(
            [str(event_dict.get("event", ""))]
            + [
                f"{k}={v}"
                for k, v in event_dict.items()
                if k not in ("event", "level", "timestamp")
            ]
        ),
        "PRIORITY": str(_PRIORITY.get(str(event_dict.get("level", "info")), 6)),
        "SYSLOG_IDENTIFIER": "rolling-update",
    }
    for key in _JOURNAL_FIELDS:
        if event_dict.get(key) is not None:
            fields[key.upper()] = str(event_dict[key])
    fields["JSON"] = json.dumps(event_dict, ensure_ascii=False, default=str)
    out = bytearray()
    for key, value in fields.items():
        data = value.encode()
        if b"\n" in data:
            out += key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournaldLogger:
    """Sends each rendered entry as one datagram to journald's native socket.

    An entry too large for a datagram goes the way journald allows for it: in a
    sealed memfd whose descriptor is passed over the socket.
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def msg(self, entry: bytes) -> None:
        try:
            self._socket.sendto(entry, self._path)
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                raise
            self._send_large(entry)

    def _send_large(self, entry: bytes) -> None:
        fd = os.memfd_create("rolling-update-journal", os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, entry)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)  # fmt: skip
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self._socket.sendmsg([], rights, 0, self._path)
        finally:
            os.close(fd)

    log = debug = info = warning = error = critical = exception = msg

    def close(self) -> None:
        self._socket.close()


# The one journald socket of the process; closed when logging is configured again.
_journal: JournaldLogger | None = None


def configure(
    fmt: LogFormat = "console", stream: TextIO | None = None, *, journal: str | None = None
) -> None:
    """Configure structlog for the whole process.

    ``journald`` writes to ``journal`` (default: $ROLLING_UPDATE_JOURNAL_SOCKET,
    else journald's own socket) in journald's native protocol.
    """
    global _journal
    if _journal is not None:
        _journal.close()
        _journal = None
    out = stream if stream is not None else sys.stdout
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redactor,
    ]
    if fmt == "journald":
        path = journal or os.environ.get("ROLLING_UPDATE_JOURNAL_SOCKET") or JOURNAL_SOCKET
        # Tracebacks become a field before the redactor runs: the binary entry itself
        # must not be rewritten afterwards (its lengths would no longer match).
        processors.insert(-1, structlog.processors.format_exc_info)
        processors.append(lambda _logger, _name, event_dict: journal_entry(event_dict))
        journal_logger = _journal = JournaldLogger(path)
        structlog.configure(
            processors=processors,
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=lambda *args: journal_logger,
            cache_logger_on_first_use=False,
        )
        return
    factory: Any = structlog.PrintLoggerFactory(out)
    use_terminal(None)
    if fmt == "json":
        processors += [
            structlog.processors.format_exc_info,
            redactor.rendered(structlog.processors.JSONRenderer(ensure_ascii=False)),
        ]
    else:
        processors.append(redactor.rendered(ConsoleRenderer()))
        if out.isatty():
            # On a terminal lines go through rich, which keeps the live footer of the
            # waits under way (see _progress) below them.
            console = Console(file=out, highlight=False, soft_wrap=True)
            use_terminal(console)
            terminal = TerminalLogger(console)
            factory = lambda *args: terminal  # noqa: E731
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


class TerminalLogger:
    """Prints rendered lines through a rich console, as they are (no markup, no emoji codes)."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def msg(self, message: str) -> None:
        self._console.print(message, markup=False, highlight=False, emoji=False)

    log = debug = info = warning = error = critical = exception = msg
