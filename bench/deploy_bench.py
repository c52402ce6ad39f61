"""Deploy the stand-in app N times on the local engine and print what it cost.

    .venv/bin/python -m bench.deploy_bench --runs 5

Needs what the tests need (`bash scripts/test-env.sh`). A prober GETs the
production port every 20 ms through every deploy. Prints one table; asserts
nothing (figures are read, not tested).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.support import ROOT, Prober, Run, Service, docker


def deploy_measured(service: Service) -> tuple[Run, float]:
    """One CLI deploy; returns its outcome and the tool's own peak RSS in MiB."""
    env = {k: v for k, v in os.environ.items() if k != "ENV_REGION"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        began = time.monotonic()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rolling_update",
                "deploy",
                "--config",
                str(service.workdir / "rolling-update.toml"),
                "--log-format",
                "json",
            ],
            stdout=out,
            stderr=err,
            env=env,
            cwd=ROOT,
        )
        # wait4 gives this child's own rusage, not that of every child so far.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - began
        out.seek(0)
        err.seek(0)
        run = Run(process.returncode, out.read(), err.read(), seconds)
    return run, usage.ru_maxrss / 1024


def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def bench_switch(boot: float, runs: int) -> dict[str, Any]:
    rows: dict[str, list[float]] = {
        k: [] for k in ("window", "failed", "two", "mem", "wall", "overhead", "rss")
    }
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Path(tmp))
        try:
            service.start_blue("1.0.0", env={"BOOT_DELAY": str(boot)})
            for i in range(runs):
                service.write_app(f"2.0.{i}", knobs={"BOOT_DELAY": boot})
                service.config(
                    tick="settle = 0\nguard = 1\ninterval = 0.1\ntimeout = 30\n",
                    verify="timeout = 30\n",
                )
                with Prober(service.version_url()) as prober:
                    run, rss = deploy_measured(service)
                if run.code != 0:
                    raise SystemExit(f"deploy failed: {run.stderr}")
                done = run.event("deploy.done")[0]
                steps = sum(e["seconds"] for e in run.event("deploy.step.done"))
                rows["window"].append(prober.longest_gap())
                rows["failed"].append(prober.failures)
                rows["two"].append(done["measured"]["two_containers_s"])
                rows["mem"].append(done["measured"].get("green_memory_peak_mb", 0))
                rows["wall"].append(run.seconds)
                rows["overhead"].append(run.seconds - steps)
                rows["rss"].append(rss)
        finally:
            service.cleanup()
    return rows


def bench_crash(runs: int) -> list[float]:
    """Seconds from green's death (engine event time) to the end of the rollback."""
    out: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Path(tmp))
        try:
            service.start_blue("1.0.0")
            service.write_app("2.0.0", knobs={"CRASH_AFTER": 1, "BOOT_DELAY": 30})
            service.config(health='path = "/api/brain/health"\ninterval = 5\nattempts = 12\n')
            for _ in range(runs):
                began = time.time()
                run, _ = deploy_measured(service)
                assert run.code == 1, run.stderr
                died = service.events_since(
                    began, "die", "{{.TimeNano}}", f"container={service.green}"
                )
                done = stamp(run.event("deploy.rollback.done")[0])
                out.append(done - int(died[0]) / 1e9)
        finally:
            service.cleanup()
    return out


def spread(values: Sequence[float], unit: str = "s", digits: int = 3) -> str:
    return (
        f"{min(values):.{digits}f} / {statistics.median(values):.{digits}f} / "
        f"{max(values):.{digits}f} {unit}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="deploys per scenario (default 5)")
    args = parser.parse_args()
    print(f"rolling_update deploy benchmark, {args.runs} deploys per scenario, prober every 20 ms")
    print(
        f"engine {docker('version', '--format', '{{.Server.Version}}')}, {os.cpu_count()} cores\n"
    )
    print(
        f"| {'figure (min / median / max)':<38} | {'instant-boot app':<28} | {'2 s-boot app':<28} |"
    )
    print(f"|{'-' * 40}|{'-' * 30}|{'-' * 30}|")
    results = {boot: bench_switch(boot, args.runs) for boot in (0.0, 2.0)}
    lines = [
        ("downtime window (longest gap on 5221)", "window", "s", 3),
        ("failed probe requests per deploy", "failed", "", 0),
        ("two-container time", "two", "s", 2),
        ("green memory peak", "mem", "MiB", 1),
        ("total wall time per deploy", "wall", "s", 2),
        ("tool overhead (wall − steps)", "overhead", "s", 2),
        ("tool peak RSS", "rss", "MiB", 1),
    ]
    for label, key, unit, digits in lines:
        cells = [spread(results[b][key], unit, digits) for b in (0.0, 2.0)]
        print(f"| {label:<38} | {cells[0]:<28} | {cells[1]:<28} |")
    crash = bench_crash(args.runs)
    print(f"| {'green crash → rollback complete':<38} | {spread(crash):<28} | {'':<28} |")
    print()
    for boot in (0.0, 2.0):
        bound = 0.4 + boot
        median = statistics.median(results[boot]["window"])
        verdict = "met" if median <= bound else "NOT met"
        bound_text = f"0.4 s + {boot:g} s boot = {bound:.1f} s"
        print(f"window bound {bound_text}: median {median:.3f} s, {verdict}")


if __name__ == "__main__":
    main()
