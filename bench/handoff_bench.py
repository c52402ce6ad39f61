"""Failed requests and latency through a deploy: kernel handoff vs restart vs the bash flow.

    .venv/bin/python -m bench.handoff_bench

Needs what the tests need (`bash scripts/test-env.sh`). For each case it deploys the
stand-in (tests/app) from v1 to v2 with `switch.mode = "handoff"` and with `"restart"`,
and for the first two cases also runs the PRD's bash flow (stop blue, `docker run` the
new image on the production port), all in the same run on the same images. Cases: an
app that binds at once, one that boots in 2 s, a rollback after the switch, a service
on the default bridge network publishing its port (`-p PORT:PORT`, not the host
network), and the instant-boot app under a heavier load. The instant-boot case also
runs the handoff with `switch.drain_timeout = 0` (blue stopped without waiting for its
connections), to show what that wait is for.

Load (bench/load.py, one process on the host, one in a container), bounded and on this
machine only, from 2 s before each deploy to 2 s after it. The usual load: on 127.0.0.1
and on [::1] alike, 4 clients opening a new connection per request, 2 keep-alive
clients that never retry and 2 that retry a failed GET once on a new connection (as
common clients do for idempotent requests), each starting a request every 20 ms; 2
clients on 127.0.0.1 whose requests take 2 s each (the stand-in's slow route, a new
connection each); and one client in a container on the default bridge reaching the
host's docker0 address (the `prerouting` path), every 20 ms. The heavier load, on
127.0.0.1 only: 12 new-connection clients every 20 ms (600/s), 32 keep-alive clients
and 32 retrying ones every 50 ms (1,280/s), plus the slow and the bridge clients. The
rate reached is printed. Prints one table and, under it, why each request failed
(with the deploy's last log event before it) and what the kernel held: IPv6 flows that
conntrack tracked before the deploy, connections to green that were reset (conntrack
sends a new connection from the same source port to green's port for 10 s). Asserts
nothing. `--switch 'LINES'` adds TOML lines to every deploy's `[switch]` table (a
setting under trial); `--only CASE[/MODE]` and `--repeat N` run a part of it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio

from bench.deploy_bench import stamp
from tests.support import BASE_IMAGE, Service, docker

PATH = "/api/brain/hardening/status"
SLOW = "/__standin/sleep?s=2"
LOAD = Path(__file__).resolve().with_name("load.py")
# Load runs this long before and after each deploy: the "before" and "after" phases.
SETTLE = 2.0
# The load's own bound, far above any deploy here.
LOAD_LIMIT = 300


@dataclass(frozen=True)
class Lane:
    """A group of identical clients of bench/load.py (its spec, less the port)."""

    name: str
    host: str
    count: int
    interval: float
    keep_alive: bool = False
    retry: bool = False
    path: str = PATH
    timeout: float = 1.0

    def spec(self, port: int) -> dict[str, Any]:
        return {**asdict(self), "port": port}


def clients(host: str, family: str, *, new: int, kept: int, interval: float) -> list[Lane]:
    """New-connection, keep-alive and retrying keep-alive clients on one address."""
    return [
        Lane(f"new {family}", host, new, 0.02),
        Lane(f"keep-alive {family}", host, kept, interval, keep_alive=True),
        Lane(f"retrying {family}", host, kept, interval, keep_alive=True, retry=True),
    ]


SLOW_LANE = Lane("2 s requests", "127.0.0.1", 2, 0.02, path=SLOW, timeout=4.0)
USUAL = [
    *clients("127.0.0.1", "v4", new=4, kept=2, interval=0.02),
    *clients("::1", "v6", new=4, kept=2, interval=0.02),
    SLOW_LANE,
]
HEAVY = [*clients("127.0.0.1", "v4", new=12, kept=32, interval=0.05), SLOW_LANE]
# Latency is read from these (the slow and the bridge clients have their own paths).
FAST = ("new", "keep-alive", "retrying")


@dataclass(frozen=True)
class Case:
    name: str
    modes: tuple[str, ...]
    boot: float = 0.0
    rollback: bool = False
    bridge_network: bool = False
    lanes: tuple[Lane, ...] = tuple(USUAL)


CASES = (
    Case("instant-boot", ("handoff", "handoff-no-drain", "restart", "bash")),
    Case("2s-boot", ("handoff", "restart", "bash"), boot=2.0),
    Case("rollback", ("handoff", "restart"), rollback=True),
    Case("bridge, -p", ("handoff", "restart"), bridge_network=True),
    Case("heavy load", ("handoff", "restart"), lanes=tuple(HEAVY)),
)


@dataclass
class Deployed:
    """What the deploy said: its exit, the switch it used, its log events as (time, label)."""

    code: int
    used: str
    marks: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Sample:
    lane: str
    at: float
    seconds: float
    ok: bool
    why: str | None
    version: str | None = None
    # The answering container's port (the stand-in's own field): which replica, or its green.
    port: int | None = None


def samples_of(output: str) -> list[Sample]:
    found = json.loads(output)
    return [Sample(found["lanes"][i], *rest) for i, *rest in found["samples"]]


def docker0() -> str | None:
    """The host's address on the default bridge; ``None`` without one (a second dockerd
    started with ``--bridge=none`` in the host's namespace deletes docker0)."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=False
    ).stdout.split()
    return out[3].split("/")[0] if len(out) > 3 else None


def docker0_index() -> str | None:
    """docker0's interface index: a new one means it was deleted and made again meanwhile,
    which detaches the bridge containers that ran (their requests go nowhere)."""
    out = subprocess.run(
        ["ip", "-o", "link", "show", "docker0"], capture_output=True, text=True, check=False
    ).stdout
    return out.split(":", 1)[0] or None


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def conntrack(family: str, state: str, port: int, reply_port: int | None = None) -> int:
    """Connections conntrack holds in ``state`` to ``port`` (the original direction), over
    ``family`` ("ipv4", "ipv6"), and answered from ``reply_port`` when given (translated)."""
    try:
        table = Path("/proc/net/nf_conntrack").read_text()
    except OSError:
        return 0
    count = 0
    for line in table.splitlines():
        if not line.startswith(family) or f" {state} " not in line:
            continue
        # dport= and sport= come twice: the original direction, then the reply.
        dports = [f.partition("=")[2] for f in line.split() if f.startswith("dport=")]
        sports = [f.partition("=")[2] for f in line.split() if f.startswith("sport=")]
        if dports[:1] == [str(port)] and (reply_port is None or sports[1:2] == [str(reply_port)]):
            count += 1
    return count


def foreign_tables() -> list[str]:
    """The nftables tables on the host but Docker's own."""
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False)
    found = [line.removeprefix("table ") for line in out.stdout.splitlines()]
    return [t for t in found if t not in ("ip nat", "ip filter")]


def under_load(
    service: Service,
    lanes: Sequence[Lane],
    action: Callable[[], Deployed],
    *,
    bridge_client: bool = True,
) -> dict[str, Any]:
    """Run ``action`` (a deploy) with the load around it, and the bridge client unless
    told not to; returns what the clients saw, in figures and as ``samples`` (the host's),
    with the deploy (``deployed``) and when it ``began`` and ``ended`` (Unix time)."""
    spec = {"seconds": LOAD_LIMIT, "lanes": [lane.spec(service.port) for lane in lanes]}
    gateway = docker0() if bridge_client else None
    bridge_index = docker0_index()
    load = subprocess.Popen(
        [sys.executable, str(LOAD), json.dumps(spec)], stdout=subprocess.PIPE, text=True
    )
    bridge = None
    if gateway is not None:
        bridge_spec = {
            "seconds": LOAD_LIMIT,
            "lanes": [Lane("bridge", gateway, 1, 0.02).spec(service.port)],
        }
        bridge = docker(
            "run", "-d", "-v", f"{LOAD}:/load.py:ro", BASE_IMAGE,
            "python3", "/load.py", json.dumps(bridge_spec),
        )  # fmt: skip
    try:
        time.sleep(SETTLE)
        # Here an IPv6 flow is tracked only if a nat or ct table was on the host when it
        # opened (machine-facts); one that is not is taken mid-flow by the redirect.
        tracked = conntrack("ipv6", "ESTABLISHED", service.port)
        tables = foreign_tables()
        began = time.time()
        deployed = action()
        ended = time.time()
        # A connection green reset, left CLOSE in conntrack for 10 s: a new SYN from its
        # source port reopens that entry, translation included, toward green's closed port.
        reopen = conntrack("ipv4", "CLOSE", service.port, service.green_port)
        reopen += conntrack("ipv6", "CLOSE", service.port, service.green_port)
        time.sleep(SETTLE)
    finally:
        load.terminate()
        out, _ = load.communicate(timeout=30)
        bridge_out = '{"lanes": [], "samples": []}'
        if bridge is not None:
            docker("stop", "-t", "10", bridge, check=False)
            bridge_out = docker("logs", bridge, check=False)
            docker("rm", "-f", bridge, check=False)
    host, bridged = samples_of(out), samples_of(bridge_out)
    fast = [s for s in host if s.lane.startswith(FAST)]
    phases: dict[str, Callable[[Sample], bool]] = {
        "before": lambda s: s.at < began,
        "during": lambda s: began <= s.at <= ended,
        "after": lambda s: s.at > ended,
    }
    first, last = min(s.at for s in host), max(s.at + s.seconds for s in host)
    failed = Counter(s.lane for s in host + bridged if not s.ok)
    count = Counter(s.lane for s in host + bridged)
    row: dict[str, Any] = {
        "exit": deployed.code,
        "used": deployed.used,
        "requests": len(host),
        "rps": round(len(host) / (last - first)),
        "failed": failed,
        "count": count,
        "deploy_s": ended - began,
        "causes": causes(host + bridged, deployed.marks, began),
        "samples": host,
        "deployed": deployed,
        "began": began,
        "ended": ended,
    }
    if tracked:
        row["causes"].append(
            f"{tracked} IPv6 connections to the port were tracked by conntrack before the "
            f"deploy (tables on the host: {', '.join(tables) or 'none now'}): such flows "
            "outlive the redirect"
        )
    if docker0_index() != bridge_index:
        row["causes"].append("docker0 was deleted meanwhile: the bridge client's figure is void")
    if reopen:
        row["causes"].append(
            f"{reopen} connections redirected to green and reset ended in conntrack's CLOSE "
            "state: for 10 s a new connection from one of their source ports is sent to "
            "green's port"
        )
    for phase, within in phases.items():
        row[f"failed_{phase}"] = sum(not s.ok for s in host + bridged if within(s))
        ok = [s.seconds for s in fast if s.ok and within(s)]
        row[f"p50_{phase}"] = percentile(ok, 0.5) * 1000
        row[f"p99_{phase}"] = percentile(ok, 0.99) * 1000
    return row


def causes(
    samples: Sequence[Sample], marks: Sequence[tuple[float, str]], began: float
) -> list[str]:
    """One line per client and cause of failure (and per cause a retry saved): how many,
    and the deploy's last log event before each failed (how long before it ended)."""
    timeline = sorted([*marks, (began, "deploy began")])
    groups: dict[tuple[str, bool, str], list[tuple[str, float]]] = defaultdict(list)
    for s in samples:
        if s.why is None:
            continue
        end = s.at + s.seconds
        when, what = next(
            ((t, m) for t, m in reversed(timeline) if t <= end), (began, "before the deploy")
        )
        groups[(s.lane, s.ok, s.why)].append((what, end - when))
    lines = []
    for (lane, ok, why), hits in sorted(groups.items(), key=lambda g: (g[0][0], -len(g[1]))):
        by_mark: dict[str, list[float]] = defaultdict(list)
        for what, after in hits:
            by_mark[what].append(after)
        where = ", ".join(
            f"{len(v)} after {m} (+{min(v):.2f}–{max(v):.2f} s)"
            for m, v in sorted(by_mark.items(), key=lambda kv: -len(kv[1]))[:3]
        )
        saved = "saved by the retry: " if ok else ""
        lines.append(f"{lane}: {len(hits)} × {saved}{why} [{where}]")
    return lines


def switch_used(run_events: Sequence[dict[str, Any]]) -> str:
    """The switch the deploy actually made, from its own log."""
    if any(e.get("event") == "handoff.redirect" for e in run_events):
        return "handoff"
    fallback = [e for e in run_events if e.get("event") == "switch.mode"]
    if fallback:
        return f"{fallback[0].get('mode')} (fallback)"
    return "restart"


def label(event: dict[str, Any]) -> str:
    detail = event.get("step") or event.get("container") or ""
    return f"{event['event']} {detail}".strip()


def run_case(case: Case, mode: str, switch_extra: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Path(tmp))
        try:
            network = (
                ("-p", f"{service.port}:{service.port}")
                if case.bridge_network
                else ("--network", "host")
            )
            service.start_blue(
                "1.0.0",
                args=(*network, "--restart", "unless-stopped"),
                knobs={"BOOT_DELAY": case.boot},
            )
            knobs: dict[str, object] = {"BOOT_DELAY": case.boot}
            if case.rollback:
                knobs["FAIL_ON_PORT"] = service.port
            service.write_app("2.0.0", knobs=knobs)
            switch = "handoff" if mode.startswith("handoff") else "restart"
            drain = "drain_timeout = 0\n" if mode == "handoff-no-drain" else ""
            service.config(
                verify="timeout = 5\nsoak = 1\n",
                extra=f'[switch]\nmode = "{switch}"\n{drain}{switch_extra}',
            )
            if mode == "bash":
                docker(
                    "build", "-q", "--build-arg", f"BASE={BASE_IMAGE}",
                    "-t", f"{service.repo}:2.0.0", str(service.workdir / "brain"),
                )  # fmt: skip

                def action() -> Deployed:
                    marks = [(time.time(), "docker stop")]
                    docker("stop", service.name)
                    docker("rm", service.name)
                    marks.append((time.time(), "docker run"))
                    docker(
                        "run", "-d", "--name", service.name, "--network", "host",
                        "--restart", "unless-stopped", "-e", f"PORT={service.port}",
                        f"{service.repo}:2.0.0",
                    )  # fmt: skip
                    deadline = time.monotonic() + 30
                    while service.serving() is None and time.monotonic() < deadline:
                        time.sleep(0.02)
                    return Deployed(0, "bash", marks)
            else:

                def action() -> Deployed:
                    run = service.deploy()
                    events = run.events
                    marks = [(stamp(e), label(e)) for e in events if "timestamp" in e]
                    return Deployed(run.code, switch_used(events), marks)

            return under_load(service, case.lanes, action)
        finally:
            service.cleanup()


async def redirect_overhead(requests: int) -> tuple[float, float, float, float]:
    """p50/p99 (ms) of a GET straight to a port, and through the handoff's redirect to it."""
    import aiohttp
    from aiohttp import web

    from rolling_update._handoff.nft import redirect, remove, table_name
    from tests.support import free_port

    async def answer(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    green, production = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", green).start()
    table = table_name("bench-overhead")
    timings: dict[int, list[float]] = {green: [], production: []}
    try:
        await redirect(table, production, green)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as session:
            for _ in range(requests):
                for port in (green, production):
                    began = time.perf_counter()
                    async with session.get(f"http://127.0.0.1:{port}/") as response:
                        await response.read()
                    timings[port].append(time.perf_counter() - began)
    finally:
        await remove(table)
        await runner.cleanup()
    direct, through = timings[green], timings[production]
    return (
        statistics.median(direct) * 1000,
        percentile(direct, 0.99) * 1000,
        statistics.median(through) * 1000,
        percentile(through, 0.99) * 1000,
    )


def pair(row: dict[str, Any], kind: str) -> str:
    """Failed requests of a kind of client, IPv4 / IPv6 ("–": no such client in the load)."""
    cells = []
    for family in ("v4", "v6"):
        lane = f"{kind} {family}"
        cells.append(str(row["failed"][lane]) if row["count"][lane] else "–")
    return " / ".join(cells)


def of(row: dict[str, Any], lane: str) -> str:
    return f"{row['failed'][lane]} of {row['count'][lane]}" if row["count"][lane] else "–"


def print_row(case: Case, mode: str, r: dict[str, Any]) -> None:
    print(
        f"| {case.name} | {mode} | {r['used']} | {r['exit']} | {r['requests']} ({r['rps']}) "
        f"| {pair(r, 'new')} | {pair(r, 'keep-alive')} | {pair(r, 'retrying')} "
        f"| {of(r, SLOW_LANE.name)} | {of(r, 'bridge')} "
        f"| {r['failed_before']} / {r['failed_during']} / {r['failed_after']} "
        f"| {r['p50_before']:.1f} / {r['p99_before']:.1f} "
        f"| {r['p50_during']:.1f} / {r['p99_during']:.1f} "
        f"| {r['p50_after']:.1f} / {r['p99_after']:.1f} | {r['deploy_s']:.1f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--overhead-requests", type=int, default=1000)
    parser.add_argument(
        "--only", action="append", default=[], help="CASE or CASE/MODE to run (repeatable)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case and mode")
    parser.add_argument(
        "--switch", default="", help="TOML lines added to each deploy's [switch] table"
    )
    args = parser.parse_args()
    extra = args.switch.replace("\\n", "\n") + "\n" if args.switch else ""
    print(
        "| case | mode | switch used | exit | requests (≈rps) | failed, new connections v4 / v6 "
        "| failed, keep-alive v4 / v6 | failed, keep-alive retrying v4 / v6 "
        "| failed, 2 s requests | failed, bridge client | failed before / during / after "
        "| p50 / p99 before (ms) | p50 / p99 during (ms) | p50 / p99 after (ms) | deploy (s) |"
    )
    print("|---" * 15 + "|", flush=True)
    rows = []
    for case in CASES:
        for mode in case.modes:
            if args.only and not {case.name, f"{case.name}/{mode}"} & set(args.only):
                continue
            if case.bridge_network and docker0() is None:
                print(f"| {case.name} | {mode} | not run: the host has no docker0 |", flush=True)
                continue
            for _ in range(args.repeat):
                row = run_case(case, mode, extra)
                print_row(case, mode, row)
                rows.append((case, mode, row))
    if docker0() is None:
        print("\nThe host has no docker0: the bridge client and the bridge case did not run.")
    heavy = [r for case, _, r in rows if case.name == "heavy load"]
    if heavy:
        reached = ", ".join(str(r["rps"]) for r in heavy)
        print(f"\nHeavy load: {reached} requests/s reached on 127.0.0.1 (bridge client aside).")
    print("\nWhy requests failed (client: count × cause [the deploy's last log event before]):")
    for case, mode, r in rows:
        for line in r["causes"]:
            print(f"- {case.name} / {mode}: {line}")
    if args.only:
        return
    d50, d99, r50, r99 = anyio.run(redirect_overhead, args.overhead_requests)
    print()
    print(f"Redirect overhead ({args.overhead_requests} GETs each, new connection per request):")
    print("| path | p50 (ms) | p99 (ms) |\n|---|---|---|")
    print(f"| direct to the port | {d50:.3f} | {d99:.3f} |")
    print(f"| through the nftables redirect | {r50:.3f} | {r99:.3f} |")


if __name__ == "__main__":
    main()
