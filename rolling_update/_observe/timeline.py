"""A deploy at a glance: one bar per phase on a time axis, and when traffic moved.

Built from what the saga runner recorded (each step's run and undo on the
monotonic clock) and the moments the steps noted; kept in the audit log, logged
as data (``deploy.timeline``) and drawn as text for people. Plain characters,
no terminal control codes: the same text reads in a terminal, a file or journald.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rolling_update._observe import measures


@dataclass
class Phase:
    """One step's run or undo on the monotonic clock; ``result`` once it ended."""

    name: str
    title: str
    began: float
    ended: float | None = None
    result: str = "running"
    """done, failed, interrupted, undone, undo-failed."""


WIDTH = 48
_GLYPH = {"done": "█", "undone": "░", "failed": "▓", "interrupted": "▓", "undo-failed": "▓"}


def build(
    phases: Sequence[Phase],
    began: float,
    ended: float,
    marks: Mapping[str, float | None],
    measured: Mapping[str, Any],
) -> dict[str, Any]:
    """The timeline as data: seconds from the deploy's start (``began``, monotonic)."""

    def at(moment: float) -> float:
        return round(max(0.0, moment - began), 3)

    rows = [
        {
            "name": phase.name,
            "title": phase.title,
            "start_s": at(phase.began),
            "seconds": round((phase.ended or ended) - phase.began, 3),
            "result": phase.result,
        }
        for phase in phases
    ]
    found = [
        {"at_s": seconds, "what": what}
        for seconds, what in sorted((at(moment), what) for what, moment in marks.items() if moment)
    ]
    data: dict[str, Any] = {measures.TOTAL: at(ended), "phases": rows, "marks": found}
    if measures.TWO_CONTAINERS in measured:
        data["two_versions_s"] = measured[measures.TWO_CONTAINERS]
    if measures.HANDOFF_FAILED_REQUESTS in measured:
        data["failed_requests"] = measured[measures.HANDOFF_FAILED_REQUESTS]
        data["requests"] = measured.get(measures.HANDOFF_REQUESTS, 0)
    return data


def render(timeline: Mapping[str, Any], width: int = WIDTH) -> str:
    """The timeline as text, one bar a phase; ``▲`` under the bars marks each moment."""
    total = max(float(timeline[measures.TOTAL]), 1e-3)

    def column(seconds: float) -> int:
        return min(width - 1, int(seconds / total * width))

    name_width = max([len(p["name"]) for p in timeline["phases"]] + [5])
    lines = [f"timeline, {total:.1f} s (█ ran, ░ undone, ▓ failed or cut short):"]
    for phase in timeline["phases"]:
        start, seconds = float(phase["start_s"]), float(phase["seconds"])
        first, last = column(start), column(start + seconds)
        bar = "·" * first + _GLYPH.get(phase["result"], "█") * (last - first + 1)
        lines.append(
            f"  {phase['name']:<{name_width}} {bar.ljust(width, '·')} "
            f"{start:6.1f} +{seconds:5.1f} s  {phase['result']}"
        )
    for mark in timeline["marks"]:
        arrow = " " * column(float(mark["at_s"])) + "▲"
        lines.append(
            f"  {'':<{name_width}} {arrow.ljust(width)} {mark['at_s']:6.1f} s  {mark['what']}"
        )
    facts = []
    if "two_versions_s" in timeline:
        facts.append(f"two versions ran side by side {timeline['two_versions_s']:.1f} s")
    if "failed_requests" in timeline:
        facts.append(
            f"failed requests while traffic moved: {timeline['failed_requests']} "
            f"of {timeline['requests']} counted"
        )
    if facts:
        lines.append("  " + "; ".join(facts))
    return "\n".join(lines)
