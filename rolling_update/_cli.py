"""Command line: ``python -m rolling_update deploy --config FILE``.

Exit codes (also in the README):

====  =====================================================================
0     deployed: the new version serves
1     the deploy failed and was rolled back: the old version serves
2     usage, config or preflight error: nothing was touched
3     the rollback is incomplete: a human must act (the message says what)
====  =====================================================================
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from ._config import DEFAULT_CONFIG, load_config
from ._deploy import deploy
from ._errors import (
    ConfigError,
    ContainerFailure,
    PreflightError,
    RollbackIncomplete,
    RollingUpdateError,
)
from ._logging import configure, redactor

EXIT_OK = 0
EXIT_ROLLED_BACK = 1
EXIT_USAGE = 2
EXIT_ROLLBACK_INCOMPLETE = 3


def exit_code_for(exc: BaseException) -> int:
    """The one mapping from an error to an exit code."""
    if isinstance(exc, ConfigError | PreflightError):
        return EXIT_USAGE
    if isinstance(exc, RollbackIncomplete):
        return EXIT_ROLLBACK_INCOMPLETE
    return EXIT_ROLLED_BACK


def describe(exc: BaseException) -> str:
    """One line for the operator, then the failing container's last log lines."""
    if isinstance(exc, ConfigError | PreflightError):
        line = f"error: {exc} (nothing was changed)"
    elif isinstance(exc, RollbackIncomplete):
        line = f"error: {exc}. A human must act: check `docker ps -a`."
    elif isinstance(exc, RollingUpdateError):
        line = f"error: {exc} (rolled back: the previous version serves)"
    else:
        line = f"error: unexpected {type(exc).__name__}: {exc} (rolled back)"
    failure = exc.cause if isinstance(exc, RollbackIncomplete) else exc
    if isinstance(failure, ContainerFailure) and failure.last_logs:
        tail = "\n".join(f"  | {ln}" for ln in failure.last_logs[-15:])
        line += f"\nlast log lines of {failure.container}:\n{tail}"
    return str(redactor.scrub(line))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rolling-update",
        description="Blue-green update of a long-running Docker service, with rollback.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("deploy", help="build, migrate, start green, switch, verify")
    run.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"config file (default: ./{DEFAULT_CONFIG})",
    )
    run.add_argument(
        "--log-format",
        choices=["console", "json"],
        default="console",
        help="console for people, json (one object per line) for journald",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_format)
    try:
        cfg = load_config(args.config)
        anyio.run(deploy, cfg)
    except Exception as exc:
        print(describe(exc), file=sys.stderr, flush=True)
        return exit_code_for(exc)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
