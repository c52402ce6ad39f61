"""The gradual traffic shift against a direct switch, as clients see it.

    .venv/bin/python -m bench.shift_bench [--repeat N] [--hold S] [--soak S]

Needs what the tests need (`bash scripts/test-env.sh`). Deploys the stand-in (tests/app)
from 1.0.0 to 2.0.0 on the real engine, with the handoff, under the load of
bench/load.py: 8 clients on 127.0.0.1, each opening a new connection per request and
starting one every 20 ms (at most 400 requests/s), from 2 s before each deploy to 2 s
after it. Each answer names the version that gave it (the stand-in's version status), so
every request is put on the side the kernel drew for it.

Cases, all in one run on the same machine:

- **A bad release**: 2.0.0 fails 5% of its GETs with a 500, health included (the
  stand-in's ``FAIL_RATE``: a broken pool or middleware fails every route alike).
  ``switch.steps = [10, 50, 100]``, each step held ``--hold`` s, then ``--soak`` s of
  soak, against ``[100]`` with a soak of 2 × hold + soak: both watch the new version for
  the same time, probing every 0.2 s (``switch.gate_interval`` and
  ``verify.soak_interval``). For each: the exit, the requests the bad version answered
  (and how many of those failed) before the port was back on blue, the other failures,
  and the time from the first request it answered to the port back on blue (the
  rollback's ``handoff.released`` to blue).
- **A bad release whose health stays healthy** (``FAIL_RATE_SPARES_HEALTH``: the bug is
  in routes a health check does not touch): the same two, and the gradual shift with
  ``switch.gate_metrics_url`` reading green's own error rate (the stand-in's
  ``/__standin/error_rate``) bounded by 1%.
- **A healthy release**, ``[10, 50, 100]``: for each step (between the tool's
  ``shift.step`` and ``handoff.redirect`` events) the requests, those failed, and the
  share of new connections each version answered.

Prints the tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.deploy_bench import spread, stamp
from bench.handoff_bench import SETTLE, Deployed, Lane, Sample, label, switch_used, under_load
from tests.support import Service, docker

BAD, GOOD = "2.0.0", "1.0.0"
RATE = 0.05
LANES = [Lane("new v4", "127.0.0.1", 8, 0.02)]
GATE_INTERVAL = 0.2
METRICS_MAX = 0.01


@dataclass(frozen=True)
class Case:
    name: str
    steps: tuple[int, ...]
    knobs: dict[str, object] = field(default_factory=dict)
    metrics: bool = False


def bad(spares_health: bool) -> dict[str, object]:
    knobs: dict[str, object] = {"FAIL_RATE": RATE}
    if spares_health:
        knobs["FAIL_RATE_SPARES_HEALTH"] = 1
    return knobs


GRADUAL, DIRECT = (10, 50, 100), (100,)
BAD_CASES = (
    Case("5% failing, health too: gradual", GRADUAL, bad(False)),
    Case("5% failing, health too: direct", DIRECT, bad(False)),
)
SPARED_CASES = (
    Case("5% failing, health spared: gradual", GRADUAL, bad(True)),
    Case("5% failing, health spared: direct", DIRECT, bad(True)),
    Case("5% failing, health spared: gradual + metrics gate", GRADUAL, bad(True), metrics=True),
)
HEALTHY = Case("healthy: gradual", GRADUAL)


@dataclass
class Outcome:
    """One deploy under load: its exit, its log events, what the clients saw."""

    code: int
    events: list[dict[str, Any]]
    samples: list[Sample]
    began: float
    ended: float

    def at(self, event: str, **fields: object) -> float | None:
        """When the deploy first logged ``event`` with ``fields`` (Unix time)."""
        for e in self.events:
            if e.get("event") == event and all(e.get(k) == v for k, v in fields.items()):
                return stamp(e)
        return None

    def gates(self) -> str:
        """Each gate's result: passed after how many probe rounds, or failed after how long."""
        found = [
            f"{e['share']}% passed, {e['answers']} rounds"
            if e["passed"]
            else f"{e['share']}% failed at {e['held']:g} s"
            for e in self.events
            if e.get("event") == "shift.gate"
        ]
        return "; ".join(found) or "–"

    def caught(self) -> str:
        """Where the bad version was caught: the failed gate's share, the soak, or not."""
        for e in self.events:
            if e.get("event") == "shift.gate" and e.get("passed") is False:
                return f"{e['share']}% gate"
        if self.code == 0:
            return "not caught"
        failed = next((e for e in self.events if e.get("event") == "deploy.step.failed"), {})
        return str(failed.get("step") or "?")


def deploy(case: Case, hold: float, soak: float) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Path(tmp))
        try:
            service.start_blue(GOOD)
            service.write_app("2.0.0", knobs=case.knobs)
            gradual = len(case.steps) > 1
            switch = f"steps = {list(case.steps)}\nstep_hold = {hold:g}\n"
            switch += f"gate_interval = {GATE_INTERVAL:g}\n"
            if case.metrics:
                url = service.url(service.green_port, "/__standin/error_rate")
                switch += f'gate_metrics_url = "{url}"\ngate_metrics_max = {METRICS_MAX:g}\n'
            # The same watch for both: the shift's holds count in the direct switch's soak.
            watched = soak if gradual else soak + hold * (len(GRADUAL) - 1)
            service.config(
                switch=switch,
                verify=f"timeout = 10\nsoak = {watched:g}\nsoak_interval = {GATE_INTERVAL:g}\n",
            )
            runs = []

            def action() -> Deployed:
                run = service.deploy(timeout=300)
                runs.append(run)
                marks = [(stamp(e), label(e)) for e in run.events if "timestamp" in e]
                return Deployed(run.code, switch_used(run.events), marks)

            row = under_load(service, LANES, action, bridge_client=False)
            return Outcome(row["exit"], runs[0].events, row["samples"], row["began"], row["ended"])
        finally:
            service.cleanup()


def bad_figures(o: Outcome) -> dict[str, Any]:
    """What the bad version did to clients until the port was back on blue."""
    back = o.at("handoff.released", to="blue")
    until = back if back is not None else o.ended + SETTLE
    answered = [s for s in o.samples if s.version == BAD and s.at <= until]
    first = min((s.at for s in answered), default=None)
    return {
        "exit": o.code,
        "caught": o.caught(),
        "gates": o.gates(),
        "answered": len(answered),
        "failed": sum(not s.ok for s in answered),
        "other_failed": sum(not s.ok for s in o.samples if s.version != BAD),
        "exposed": None if first is None else until - first,
        "back": back is not None,
        "deploy": o.ended - o.began,
    }


def step_windows(o: Outcome) -> list[tuple[str, float, float]]:
    """Each share's span, from the deploy's own events: (name, from, to), Unix time."""
    starts: list[tuple[str, float | None]] = [("0% (before the shift)", o.samples[0].at)]
    for share in GRADUAL[:-1]:
        starts.append((f"{share}%", o.at("shift.step", share=share)))
    starts.append(("100% (handoff, until release)", o.at("handoff.redirect")))
    starts.append(("released to production", o.at("handoff.released", to="production")))
    found = [(name, t) for name, t in starts if t is not None]
    end = max(s.at for s in o.samples) + 1
    return [
        (name, t, found[i + 1][1] if i + 1 < len(found) else end)
        for i, (name, t) in enumerate(found)
    ]


def print_bad(cases: Sequence[Case], results: dict[str, list[dict[str, Any]]]) -> None:
    print(
        "| case | exit | caught at | gates | bad version's answers until the port was back on blue "
        "| of them failed (500) | other failed requests | first bad answer → port back on "
        "blue (s) | deploy (s) |"
    )
    print("|---" * 9 + "|")
    for case in cases:
        for f in results[case.name]:
            exposed = "–" if f["exposed"] is None else f"{f['exposed']:.2f}"
            if not f["back"]:
                exposed += " (never back: until the load ended)"
            print(
                f"| {case.name} | {f['exit']} | {f['caught']} | {f['gates']} | {f['answered']} "
                f"| {f['failed']} "
                f"| {f['other_failed']} | {exposed} | {f['deploy']:.1f} |",
                flush=True,
            )


def summary(cases: Sequence[Case], results: dict[str, list[dict[str, Any]]]) -> None:
    """Min / median / max over the repeats, per case."""
    print("\n| case (min / median / max) | bad answers | of them failed | exposed (s) |")
    print("|---|---|---|---|")
    for case in cases:
        rows = results[case.name]
        exposed = [f["exposed"] for f in rows if f["exposed"] is not None]
        print(
            f"| {case.name} ({len(rows)} runs) "
            f"| {spread([f['answered'] for f in rows], '', 0).strip()} "
            f"| {spread([f['failed'] for f in rows], '', 0).strip()} "
            f"| {spread(exposed, '', 2).strip() if exposed else '–'} |"
        )


def print_healthy(o: Outcome) -> None:
    print(f"\nHealthy release, steps {list(GRADUAL)}: exit {o.code}")
    print(
        f"| step | requests | failed | answered by {GOOD} (old) | answered by {BAD} (new) "
        "| new share |"
    )
    print("|---" * 6 + "|")
    for name, began, ended in step_windows(o):
        within = [s for s in o.samples if began <= s.at < ended]
        old = sum(s.version == GOOD for s in within)
        new = sum(s.version == BAD for s in within)
        share = f"{100 * new / (old + new):.1f}%" if old + new else "–"
        print(
            f"| {name} | {len(within)} | {sum(not s.ok for s in within)} | {old} | {new} "
            f"| {share} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each bad case")
    parser.add_argument("--hold", type=float, default=10, help="switch.step_hold (s)")
    parser.add_argument("--soak", type=float, default=5, help="verify.soak of the shift (s)")
    args = parser.parse_args()
    print(
        f"rolling_update gradual shift benchmark, engine "
        f"{docker('version', '--format', '{{.Server.Version}}')}; hold {args.hold:g} s per "
        f"step, soak {args.soak:g} s (direct: {args.soak + 2 * args.hold:g} s), probes every "
        f"{GATE_INTERVAL:g} s; load: 8 new-connection clients every 20 ms; bad release: "
        f"{RATE:.0%} of GETs answer 500\n"
    )
    results: dict[str, list[dict[str, Any]]] = {}
    for case in BAD_CASES:
        results[case.name] = [
            bad_figures(deploy(case, args.hold, args.soak)) for _ in range(args.repeat)
        ]
    for case in SPARED_CASES:
        results[case.name] = [bad_figures(deploy(case, args.hold, args.soak))]
    print_bad((*BAD_CASES, *SPARED_CASES), results)
    summary(BAD_CASES, results)
    print_healthy(deploy(HEALTHY, args.hold, args.soak))
    print(f"\nran until {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
