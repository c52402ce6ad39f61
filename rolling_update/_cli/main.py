"""Command line: ``python -m rolling_update deploy --config FILE`` and the other commands.

Exit codes: :data:`rolling_update._cli.exits.EXIT_TABLE` (shown by ``deploy --help``,
also in the README).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import structlog

from rolling_update._cli.exits import EXIT_TABLE, describe, outcome
from rolling_update._cli.signals import Interrupt, interruptible
from rolling_update._config.settings import DEFAULT_CONFIG, Config, load_config
from rolling_update._deploy.deploy import deploy
from rolling_update._deploy.outcome import (
    EXIT_OK,
    EXIT_ROLLBACK_INCOMPLETE,
    EXIT_ROLLED_BACK,
    EXIT_SIGNAL_BASE,
    EXIT_USAGE,
    HostOutcome,
    Outcome,
    worst,
)
from rolling_update._deploy.saga import SagaState
from rolling_update._errors import (
    RollbackIncomplete,
    RollingUpdateError,
    RolloutFailed,
)
from rolling_update._hosts.hosts import (
    Connected,
    Unit,
    connect,
    for_unit,
    image_source,
    is_rollout,
    pick,
    units_of,
)
from rolling_update._hosts.rollout import rollout
from rolling_update._observe.history import HistoryEntry, read
from rolling_update._observe.logs import configure, redactor
from rolling_update._observe.timeline import render as render_timeline
from rolling_update._operate.demo import Load, run_demo
from rolling_update._operate.init import refuse_existing, survey, write_config
from rolling_update._operate.preview import plan
from rolling_update._operate.recover import RecoveryReport, recover
from rolling_update._operate.render import format_history, format_plan, format_status
from rolling_update._operate.rollback import rollback
from rolling_update._operate.status import status

_EXAMPLES = {
    "deploy": "example:\n  python -m rolling_update deploy --config rolling-update.toml",
    "recover": "example (after a crash, or at boot):\n"
    "  python -m rolling_update recover --config rolling-update.toml",
    "rollback": "examples:\n  python -m rolling_update rollback            # the previous version\n"
    "  python -m rolling_update rollback 1.98.0     # a version whose image exists",
    "status": "example:\n  python -m rolling_update status --json | jq .production",
    "history": "examples:\n  python -m rolling_update history --limit 5\n"
    "  python -m rolling_update history --show 3f2a9c01b7e4   # one run, with its timeline",
    "plan": "example:\n  python -m rolling_update plan --config rolling-update.toml",
    "demo": "example (a Docker engine is all it needs):\n  python -m rolling_update demo",
    "init": "example:\n  python -m rolling_update init --from cecelia-node-brain --context brain",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rolling-update",
        description="Blue-green update of a long-running Docker service, with rollback.",
        epilog=_EXAMPLES["deploy"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        epilog = _EXAMPLES[name] + ("\n\n" + EXIT_TABLE if name == "deploy" else "")
        return commands.add_parser(
            name,
            help=text,
            description=text,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    run = command("deploy", "build, migrate, start green, switch, verify")
    run.add_argument(
        "--force",
        action="store_true",
        help="deploy even when the version asked for is the one production runs",
    )
    fix = command(
        "recover", "after a crash: restore one serving production container, no leftovers"
    )
    back = command(
        "rollback", "back to the previous version (or VERSION) through the same safe flow"
    )
    back.add_argument("version", nargs="?", help="a version whose image exists")
    show = command("status", "what serves now, its health, the last deploy")
    past = command("history", "every deploy, rollback and recover here")
    past.add_argument("--limit", type=int, default=20, help="the last N (default 20; 0: all)")
    past.add_argument("--show", metavar="ID", help="one run in full, with its timeline")
    dry = command("plan", "what a deploy would do now; changes nothing")
    show_off = command("demo", "deploy a small service of the tool's own, then a broken one")
    show_off.add_argument("--base", help="an image with python3 (default: one the engine has)")
    start = command("init", "write rolling-update.toml for a container that runs already")
    start.add_argument("--from", dest="container", required=True, help="the running container")
    start.add_argument("--health", help="its health path (default: probe the common ones)")
    start.add_argument("--context", help="build context of the new versions (default: no build)")
    start.add_argument("--version-file", help="JSON file with the version (default: package.json)")
    start.add_argument(
        "--output", type=Path, default=DEFAULT_CONFIG, help=f"default: ./{DEFAULT_CONFIG}"
    )
    start.add_argument("--force", action="store_true", help="replace an existing file")
    for sub in (show, past, dry):
        sub.add_argument("--json", action="store_true", help="one JSON document")
    for sub in (fix, back, show, past, dry):
        sub.add_argument(
            "--host", help="with [[hosts]]: only this host (default: every host, in order)"
        )
        sub.add_argument(
            "--replica",
            help="with service.replicas: only this replica (default: every replica, in order)",
        )
    for sub in (run, fix, back, show, past, dry):
        sub.add_argument(
            "--config",
            type=Path,
            default=DEFAULT_CONFIG,
            help=f"config file (default: ./{DEFAULT_CONFIG})",
        )
        sub.add_argument(
            "--log-format",
            choices=["console", "json", "journald"],
            default="console",
            help="console for people, json (one object per line), or journald's native protocol",
        )
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rolling-update")
    except PackageNotFoundError:
        return "(not installed)"


# What the operator runs for a unit a rollout left part-way, by how it ended there: each
# needs `recover` on that unit alone (exit 3 or 4), as a single host's line says; a revert
# of rollback-all that failed is asked for again once the unit is settled.
_LEFT_TO_RECOVER = {
    Outcome.ROLLBACK_INCOMPLETE: (
        "its rollback did not finish (its line says why); once that is mended, run "
        "`rolling-update recover {flags}`"
    ),
    Outcome.FAILED_AFTER_COMMIT: (
        "the new version serves; run `rolling-update recover {flags}` to finish"
    ),
    Outcome.PRODUCTION_DOWN: (
        "the new version died past its commit; run `rolling-update recover {flags}` to "
        "start it again"
    ),
    Outcome.REVERT_FAILED: (
        "its revert to {version} did not finish (its line says why); run "
        "`rolling-update recover {flags}`, then, unless it serves {version} by then, "
        "`rolling-update rollback {version} {flags}`"
    ),
}


def left_to_do(cfg: Config, report: Sequence[HostOutcome]) -> str:
    """What to run for each unit the rollout left part-way, in the config's order:
    ``"; h2: ..."`` for each, or nothing."""
    left = {h.host: h for h in report}
    said = ""
    for unit in units_of(cfg):
        host = left.get(unit.name)
        if host is not None and host.result in _LEFT_TO_RECOVER:
            todo = _LEFT_TO_RECOVER[Outcome(host.result)]
            said += f"; {unit.name}: {todo.format(flags=unit.flags, version=host.from_version)}"
    return said


def _rollout(cfg: Config, *, force: bool = False) -> int:
    """Every host, canary first; one line per host, then the exit code of the worst."""
    report: list[HostOutcome] = []
    interrupt = Interrupt()
    error: BaseException | None = None

    async def work() -> object:
        return await rollout(cfg, report=report, force=force)

    try:
        anyio.run(interruptible, work, interrupt)
    except RolloutFailed as exc:
        error = exc
    except Exception as exc:
        # Before any host began (config, an unreachable host): nothing was changed.
        code, line = outcome(exc)
        print(describe(exc, line or str(exc)), file=sys.stderr, flush=True)
        return code
    for host in report:
        versions = f"{host.from_version or '-'} -> {host.to_version or '-'}"
        why = f": {host.reason}" if host.reason and host.result != Outcome.DEPLOYED else ""
        print(f"  {host.host:<16} {host.result:<20} {versions}{why}", file=sys.stderr)
    code = worst((h.result for h in report), failed=error is not None, signum=interrupt.signum)
    if code != EXIT_OK:
        cause = (
            f"interrupted by {signal.Signals(interrupt.signum).name}"
            if interrupt.signum is not None
            else str(error)
        )
        then = left_to_do(cfg, report)
        print(f"error: {redactor.scrub(cause)}{then}", file=sys.stderr, flush=True)
    return code


async def _each_unit(
    cfg: Config, name: str | None, replica: str | None
) -> AsyncIterator[Connected]:
    for unit in pick(cfg, name, replica):
        async with connect(cfg, unit) as connected:
            yield connected


def _deploy(
    cfg: Config,
    version: str | None = None,
    *,
    rollback_to: bool = False,
    host_name: str | None = None,
    replica: str | None = None,
    force: bool = False,
) -> int:
    if is_rollout(cfg) and not rollback_to:
        return _rollout(cfg, force=force)
    state = SagaState()
    interrupt = Interrupt()
    error: BaseException | None = None

    async def work() -> object:
        if rollback_to and is_rollout(cfg):
            # One unit after the other; the first that fails stops the rest.
            async for host in _each_unit(cfg, host_name, replica):
                await rollback(
                    host.config, version, engine=host.engine, state=state, firewall=host.firewall
                )
            return None
        if rollback_to:
            return await rollback(cfg, version, state=state)
        return await deploy(cfg, state=state, force=force)

    try:
        anyio.run(interruptible, work, interrupt)
    except Exception as exc:
        error = exc
    if error is None and (interrupt.signum is None or state.finished):
        return EXIT_OK
    if error is None and state.failures:
        assert interrupt.signum is not None
        error = RollbackIncomplete(
            RollingUpdateError(f"interrupted by {signal.Signals(interrupt.signum).name}"),
            state.failures,
        )
    code, line = outcome(error, state, interrupt.signum)
    if line is not None:
        print(describe(error, line) if error else line, file=sys.stderr, flush=True)
    return code


def _recover(cfg: Config, host_name: str | None = None, replica: str | None = None) -> int:
    reports: list[tuple[str | None, RecoveryReport]] = []
    wanted = len(pick(cfg, host_name, replica))

    failed: list[tuple[str, RollingUpdateError]] = []

    async def work() -> None:
        if not is_rollout(cfg):
            reports.append((None, await recover(cfg)))
            return
        # Each unit on its own: one that cannot be reached or recovered does not keep
        # the others from being recovered.
        for unit in pick(cfg, host_name, replica):
            try:
                async with connect(cfg, unit) as reached:
                    with structlog.contextvars.bound_contextvars(host=unit.name):
                        found = await recover(
                            reached.config, engine=reached.engine, firewall=reached.firewall
                        )
                reports.append((unit.name, found))
            except RollingUpdateError as exc:
                failed.append((unit.name, exc))

    interrupt = Interrupt()
    anyio.run(interruptible, work, interrupt)
    for name, report in reports:
        where = f"{name}: " if name else ""
        if report.unfinished:
            print(f"{where}recovered an unfinished {report.unfinished}", file=sys.stderr)
        for action in report.actions:
            print(f"  {action}", file=sys.stderr)
        print(f"{where}consistent: {report.outcome}", file=sys.stderr, flush=True)
    for name, exc in failed:
        print(describe(exc, f"{name}: error: {exc}"), file=sys.stderr, flush=True)
    if len(reports) + len(failed) < wanted:
        assert interrupt.signum is not None
        print("recover interrupted; it is safe to run it again", file=sys.stderr, flush=True)
        return EXIT_SIGNAL_BASE + interrupt.signum
    if failed:
        # Unreachable or locked hosts were not changed; a failed recovery needs a human.
        worst = [outcome(exc)[0] for _, exc in failed]
        return EXIT_ROLLBACK_INCOMPLETE if EXIT_ROLLBACK_INCOMPLETE in worst else max(worst)
    return EXIT_OK


def _show_hosts(args: argparse.Namespace, cfg: Config) -> int:
    """status, history and plan of every host (or ``--host``), one section each."""

    async def gather() -> list[tuple[Unit, Any]]:
        found: list[tuple[Unit, Any]] = []
        if args.command == "history":
            for unit in pick(cfg, args.host, args.replica):
                unit_cfg = for_unit(cfg, unit, first=False)
                found.append((unit, read(unit_cfg.state_dir, args.limit or None)))
            return found
        units = units_of(cfg)
        for unit in pick(cfg, args.host, args.replica):
            source = image_source(units, unit)
            try:
                async with connect(cfg, unit) as reached:
                    if args.command == "status":
                        report = await status(
                            reached.config, engine=reached.engine, firewall=reached.firewall
                        )
                    else:
                        report = await plan(
                            reached.config,
                            engine=reached.engine,
                            firewall=reached.firewall,
                            copied_from=None if source is None else source.name,
                            image_arrives=unit.index > 0,
                        )
            except RollingUpdateError as exc:
                # One host that cannot be reached is shown as such; the others still are.
                report = {"error": str(redactor.scrub(str(exc)))}
            found.append((unit, report))
        return found

    sections = anyio.run(gather)
    code = EXIT_ROLLED_BACK if any("error" in body for _, body in sections) else EXIT_OK
    if args.json:
        data = {
            unit.name: [e.model_dump() for e in body] if args.command == "history" else body
            for unit, body in sections
        }
        print(json.dumps({"hosts": data}, indent=2, default=str))
        return code
    for unit, body in sections:
        print(f"== {unit.label}")
        if isinstance(body, dict) and "error" in body:
            print(f"error: {body['error']}")
        elif args.command == "history":
            print(format_history(body))
        elif args.command == "status":
            print(format_status(body))
        else:
            print(format_plan(body))
    return code


def _show_one(args: argparse.Namespace, entries: list[HistoryEntry]) -> int:
    found = [e for e in entries if e.id.startswith(args.show)]
    if len(found) != 1:
        why = "no run" if not found else f"{len(found)} runs"
        print(f"error: {why} with id {args.show!r} in the history", file=sys.stderr)
        return EXIT_USAGE
    entry = found[0]
    if args.json:
        print(json.dumps(entry.model_dump(), indent=2))
        return EXIT_OK
    print(format_history([entry]))
    print(render_timeline(entry.timeline) if entry.timeline else "(no timeline recorded)")
    return EXIT_OK


def _show(args: argparse.Namespace, cfg: Config) -> int:
    if is_rollout(cfg):
        return _show_hosts(args, cfg)
    if args.command == "history" and args.show:
        return _show_one(args, read(cfg.state_dir))
    if args.command == "history":
        entries = read(cfg.state_dir, args.limit or None)
        if args.json:
            print(json.dumps([e.model_dump() for e in entries], indent=2))
        else:
            print(format_history(entries))
        return EXIT_OK
    work = status if args.command == "status" else plan
    report = anyio.run(work, cfg)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_status(report) if args.command == "status" else format_plan(report))
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    found: list[Load] = []
    interrupt = Interrupt()

    async def work() -> None:
        found.append(await run_demo(args.base))

    anyio.run(interruptible, work, interrupt)
    if interrupt.signum is not None:
        print("demo interrupted: everything it made is removed", file=sys.stderr)
        return EXIT_SIGNAL_BASE + interrupt.signum
    load = found[0]
    print(
        f"demo: 2.0.0 deployed, broken 3.0.0 rolled back; requests served {load.served}, "
        f"failed {load.failed}; nothing left behind",
        file=sys.stderr,
    )
    return EXIT_OK if load.failed == 0 else EXIT_ROLLED_BACK


def _init(args: argparse.Namespace) -> int:
    refuse_existing(args.output, args.force)
    found, green_port = anyio.run(partial(survey, args.container, health_path=args.health))
    write_config(
        found,
        green_port,
        args.output,
        context=args.context,
        version_file=args.version_file,
        force=args.force,
    )
    notes = found.notes
    for note in notes:
        print(f"  {note}", file=sys.stderr)
    print(
        f"wrote {args.output}; next: python -m rolling_update plan --config {args.output}",
        file=sys.stderr,
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # Reports own standard output; their log lines (a plan's preflight) go beside it.
        reports = args.command in ("status", "history", "plan")
        configure(getattr(args, "log_format", "console"), sys.stderr if reports else None)
        if args.command == "init":
            return _init(args)
        if args.command == "demo":
            return _demo(args)
        cfg = load_config(args.config)
        if not is_rollout(cfg) and (getattr(args, "host", None) or getattr(args, "replica", None)):
            # One container: the commands below would act on it, ignoring the option; a
            # unit this config does not have is refused instead (a ConfigError naming it).
            pick(cfg, args.host, args.replica)
        if args.command == "deploy":
            return _deploy(cfg, force=args.force)
        if args.command == "rollback":
            return _deploy(
                cfg, args.version, rollback_to=True, host_name=args.host, replica=args.replica
            )
        if args.command == "recover":
            return _recover(cfg, args.host, args.replica)
        return _show(args, cfg)
    except KeyboardInterrupt:
        # Only reachable before the engine is touched: later, signals are ours.
        print("interrupted before anything was changed", file=sys.stderr, flush=True)
        return EXIT_SIGNAL_BASE + signal.SIGINT
    except Exception as exc:
        code, line = outcome(exc)
        print(describe(exc, line or str(exc)), file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
