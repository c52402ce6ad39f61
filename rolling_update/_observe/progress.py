"""Waits that say what they wait for, and how long is left.

Every wait logs one plain ``wait.started`` line (JSON, journald, and a console
that is not a terminal). On a terminal the console also keeps a live footer,
one line per wait under way, updated in place: ``green to be healthy: 57 s left``.
The footer is drawn by rich (what Python users know for live output), through
the same console the log lines are printed with, so lines scroll above it; no
terminal control codes are written by hand, and rich honours ``NO_COLOR``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import structlog
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

_REFRESH = 0.5


@dataclass
class Wait:
    """One wait under way; ``detail`` is shown beside it (a count, a state)."""

    what: str
    ends: float | None
    detail: str = ""

    def line(self, now: float) -> str:
        left = "" if self.ends is None else f": {max(0.0, self.ends - now):.0f} s left"
        return f"⏳ {self.what}{left}" + (f" ({self.detail})" if self.detail else "")


class _Footer:
    """The terminal's live footer: the waits under way, newest last."""

    def __init__(self) -> None:
        self.console: Console | None = None
        self.waits: list[Wait] = []
        self.live: Live | None = None

    def render(self) -> Group:
        now = time.monotonic()
        return Group(*(Text(w.line(now), no_wrap=True, overflow="ellipsis") for w in self.waits))

    def add(self, wait: Wait) -> None:
        self.waits.append(wait)
        if self.console is not None and self.live is None:
            # Rich's own refresh thread redraws it (the countdown moves by itself).
            self.live = Live(
                get_renderable=self.render,
                console=self.console,
                transient=True,
                refresh_per_second=1 / _REFRESH,
            )
            self.live.start()

    def remove(self, wait: Wait) -> None:
        self.waits.remove(wait)
        if self.live is not None and not self.waits:
            self.live.stop()
            self.live = None


footer = _Footer()


def use_terminal(console: Console | None) -> None:
    """Draw the live footer on ``console`` (``None``: plain lines only)."""
    footer.console = console


@contextmanager
def waiting(what: str, seconds: float | None) -> Iterator[Wait]:
    """Say that ``what`` is being waited for, at most ``seconds`` (``None``: bounded by the
    caller's deadline, not known here); the caller applies the deadline itself."""
    structlog.get_logger().info(
        "wait.started", what=what, limit_s=None if seconds is None else round(seconds, 1)
    )
    wait = Wait(what, None if seconds is None else time.monotonic() + seconds)
    footer.add(wait)
    try:
        yield wait
    finally:
        footer.remove(wait)
