"""The operating commands' reports as text for a terminal (``--json`` prints them as they are)."""

from __future__ import annotations

import json
from typing import Any

from rolling_update._deploy.outcome import Outcome
from rolling_update._observe import measures
from rolling_update._observe.history import HistoryEntry


def format_status(report: dict[str, Any]) -> str:
    lines = [f"service      {report['service']}"]
    prod = report["production"]
    if prod is None:
        lines.append("production   none")
    else:
        state = "running" if prod["running"] else "stopped"
        lines += [
            f"production   {prod['container']} {prod['image']} (version {prod['version']}), "
            f"{state} since {prod['since']}",
            f"health       {prod['health']}"
            + (f" (docker: {prod['docker_health']})" if prod["docker_health"] else ""),
        ]
    last = report["last_deploy"]
    if last is None:
        lines.append("last deploy  none recorded")
    else:
        figures = last["measured"]
        shown = (measures.DOWNTIME_WINDOW, measures.HANDOFF, measures.HANDOFF_FAILED_REQUESTS)
        extra = [f"{k}={figures[k]}" for k in shown if k in figures]
        lines.append(
            f"last deploy  {last['id']} {last['kind']} {last['from_version']} -> "
            f"{last['to_version']}: {last['result']} in {last['seconds']:.1f}s at "
            f"{last['ended_at']} by {last['user']}@{last['host']}"
            + (f" ({', '.join(extra)})" if extra else "")
        )
    holder = report["lock_holder"]
    lines.append(
        "lock         "
        + (f"held by {holder.get('purpose')} {holder.get('deploy_id')} (pid {holder.get('pid')} "
           f"on {holder.get('host')}) since {holder.get('since')}" if holder else "free")
    )  # fmt: skip
    lines.append(f"unfinished   {report['unfinished'] or 'none'}")
    if report["engine_mark"]:
        lines.append(f"engine mark  {report['engine_mark']}")
    if report["redirect_to"]:
        share = report["redirect_share"]
        lines.append(
            f"redirect     port -> {report['redirect_to']} "
            + ("(handoff in place)" if share == 100 else
               f"for {share}% of new connections (a shift's step in place)")
        )  # fmt: skip
    for left in report["leftovers"]:
        lines.append(
            f"leftover     {left['name']} ({left['role']}, "
            f"{'running' if left['running'] else 'stopped'})"
        )
    return "\n".join(lines)


def format_history(entries: list[HistoryEntry]) -> str:
    rows = [
        f"{'ID':<13}{'WHEN':<27}{'KIND':<9}{'FROM -> TO':<22}{'RESULT':<21}{'TOOK':>7}  WHO",
    ]
    for e in entries:
        versions = f"{e.from_version or '-'} -> {e.to_version or '-'}"
        rows.append(
            f"{e.id:<13}{e.ended_at:<27}{e.kind:<9}{versions:<22}{e.result:<21}"
            f"{e.seconds:>6.1f}s  {e.user}@{e.host}"
            + (f"\n{'':<13}reason: {e.reason}" if e.reason and e.result != Outcome.DEPLOYED else "")
        )
    return "\n".join(rows)


def public_body(body: dict[str, Any]) -> dict[str, Any]:
    """A create body fit to print: env values out (they may be secrets), names kept."""
    shown = dict(body)
    shown["Env"] = sorted(item.partition("=")[0] + "=…" for item in body.get("Env") or [])
    return shown


def format_plan(report: dict[str, Any]) -> str:
    blue = report["blue"]
    actions = report["actions"]
    came = f"{blue['version'] or blue['image']}" if blue else "nothing (first deploy)"
    diff = report["diff_against_blue"]
    lines = [
        f"plan for {report['service']}: {came} -> {report['version']} ({report['image']})",
        *([f"warning: {report['already_serving']}: deploy refuses it without --force"]
          if report["already_serving"] else []),
        f"blue: {blue['image']} ({blue['version']})" if blue else "blue: none (first deploy)",
        f"switch: {report['switch']}",
        f"shift: {report['shift']}",
        "steps:",
        *(f"  {i}. {s['name']:<15} {s['title']}" for i, s in enumerate(report["steps"], 1)),
        f"build: {json.dumps(report['build'])}",
        f"migrations: {json.dumps(report['migrations'])}",
        f"rollback after the switch: {report['rollback_after_switch']}",
        f"extra tags: {', '.join(report['tags']) or '(none)'}",
        f"health: GET {report['health']['path']} expecting {report['health']['expect_status']} "
        f"{json.dumps(report['health']['expect_json'])}"
        + (f", version at {report['health']['version_path'] or report['health']['path']}"
           f" ({report['health']['version_field']})" if report['health']['version_field'] else ""),
        f"tick: {json.dumps(report['tick'])}",
        "new production container differs from blue in:",
        *(f"  {line}" for line in (
            ["(no blue)"] if diff is None else diff or ["nothing but the tool's labels"])),
        *(f"action: {a['moment']} {a['target']} {a['method']} {a['path']}" for a in actions),
    ]  # fmt: skip
    finish = report.get("recover")
    if finish:
        lines[1:1] = [
            f"unfinished: {finish['unfinished']}: deploy refuses until `recover` runs, "
            "which would:",
            *(f"  {line}" for line in finish["actions"] or ["(change no container)"]),
            f"  then: {finish['outcome']}",
        ]
    return "\n".join(lines)
