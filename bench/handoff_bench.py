"""Failed requests and latency through a deploy: kernel handoff vs restart vs the bash flow.

    .venv/bin/python -m bench.handoff_bench

Needs what the tests need (`bash scripts/test-env.sh`). For each case (an app
that binds at once, one that boots in 2 s, and a rollback after the switch)
it deploys with `switch.mode = "handoff"` and with `"restart"`, and for the
first two also runs the PRD's bash flow (stop blue, `docker run` the new
image on the production port), all in the same run on the same images.

Load, through every deploy, bounded and on this machine only: 4 clients
opening a new connection per request, 2 keep-alive clients that never retry and
2 that retry a failed GET once on a new connection (as common clients do for
idempotent requests) on 127.0.0.1, about 50 requests/s each, 2 clients whose
requests take 2 s each (the stand-in's slow route, a new connection each), plus
one client in a container on
the default bridge reaching the host's docker0 address. The instant-boot case also
runs the handoff with `switch.drain_timeout = 0` (blue stopped without waiting for
its connections), to show what that wait is for. Load starts 1 s before the
deploy and ends 1 s after it. Prints one table; asserts nothing.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from tests.support import BASE_IMAGE, Service, docker

PATH = "/api/brain/hardening/status"
SLOW = "/__standin/sleep?s=2"
# Runs until SIGTERM (at most its argv[2] seconds), then prints "ok failed".
BRIDGE_CLIENT = """
import signal, sys, time, urllib.request
url, counts = sys.argv[1], [0, 0]
def done(*_):
    print(*counts, flush=True); sys.exit(0)
signal.signal(signal.SIGTERM, done)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        urllib.request.urlopen(url, timeout=1).read(); counts[0] += 1
    except Exception:
        counts[1] += 1
    time.sleep(0.02)
done()
"""


@dataclass
class Sample:
    at: float
    seconds: float
    ok: bool


@dataclass(eq=False)
class Client(threading.Thread):
    port: int
    keep_alive: bool
    path: str = PATH
    timeout: float = 1.0
    retry: bool = False
    """On a failure of a reused keep-alive connection, send the GET again once on a new
    connection, as common HTTP clients do for idempotent requests (urllib3, aiohttp)."""
    conn: http.client.HTTPConnection | None = None
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        super().__init__(daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            reused = self.conn is not None
            ok = self.get()
            if not ok and reused and self.retry:
                ok = self.get()
            self.samples.append(Sample(began, time.monotonic() - began, ok))
            self.stop.wait(0.02)

    def get(self) -> bool:
        try:
            if self.conn is None or not self.keep_alive:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            headers = {} if self.keep_alive else {"Connection": "close"}
            self.conn.request("GET", self.path, headers=headers)
            response = self.conn.getresponse()
            response.read()
            if not self.keep_alive:
                self.conn.close()
                self.conn = None
            return response.status == 200
        except (OSError, http.client.HTTPException):
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return False


def docker0() -> str:
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[3].split("/")[0]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def under_load(service: Service, action: Callable[[], int]) -> dict[str, Any]:
    """Run ``action`` (a deploy) with the load around it; returns what the clients saw."""
    clients = [Client(service.port, keep_alive=False) for _ in range(4)]
    clients += [Client(service.port, keep_alive=True) for _ in range(2)]
    retrying = [Client(service.port, keep_alive=True, retry=True) for _ in range(2)]
    clients += retrying
    slow = [Client(service.port, keep_alive=False, path=SLOW, timeout=4) for _ in range(2)]
    clients += slow
    url = f"http://{docker0()}:{service.port}{PATH}"
    bridge = docker("run", "-d", BASE_IMAGE, "python3", "-c", BRIDGE_CLIENT, url, "120")
    for client in clients:
        client.start()
    time.sleep(1)
    began = time.monotonic()
    code = action()
    ended = time.monotonic()
    time.sleep(1)
    for client in clients:
        client.stop.set()
        client.join(5)
    docker("stop", "-t", "5", bridge, check=False)
    bridge_ok, bridge_failed = (int(n) for n in docker("logs", bridge).split()[:2])
    docker("rm", "-f", bridge, check=False)
    new = [s for c in clients if not c.keep_alive and c not in slow for s in c.samples]
    kept = [s for c in clients if c.keep_alive and not c.retry for s in c.samples]
    retried = [s for c in retrying for s in c.samples]
    slowed = [s for c in slow for s in c.samples]
    every = new + kept + retried
    during = [s.seconds for s in every if began <= s.at <= ended and s.ok]
    outside = [s.seconds for s in every if not began <= s.at <= ended and s.ok]
    return {
        "exit": code,
        "requests": len(every),
        "rps": round(len(every) / (ended - began + 2)),
        "failed_new": sum(not s.ok for s in new),
        "failed_keepalive": sum(not s.ok for s in kept),
        "failed_retrying": sum(not s.ok for s in retried),
        "slow": f"{sum(not s.ok for s in slowed)} of {len(slowed)}",
        "bridge": f"{bridge_failed} of {bridge_ok + bridge_failed}",
        "p50_outside_ms": percentile(outside, 0.5) * 1000,
        "p99_outside_ms": percentile(outside, 0.99) * 1000,
        "p50_during_ms": percentile(during, 0.5) * 1000,
        "p99_during_ms": percentile(during, 0.99) * 1000,
        "deploy_s": ended - began,
    }


def run_case(case: str, mode: str) -> dict[str, Any]:
    boot = 2.0 if case == "2s-boot" else 0.0
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Path(tmp))
        try:
            service.start_blue("1.0.0", knobs={"BOOT_DELAY": boot})
            knobs: dict[str, object] = {"BOOT_DELAY": boot}
            if case == "rollback":
                knobs["FAIL_ON_PORT"] = service.port
            service.write_app("2.0.0", knobs=knobs)
            switch = "handoff" if mode.startswith("handoff") else "restart"
            drain = "drain_timeout = 0\n" if mode == "handoff-no-drain" else ""
            service.config(
                verify="timeout = 5\nsoak = 1\n", extra=f'[switch]\nmode = "{switch}"\n{drain}'
            )
            if mode == "bash":
                docker(
                    "build", "-q", "--build-arg", f"BASE={BASE_IMAGE}",
                    "-t", f"{service.repo}:2.0.0", str(service.workdir / "brain"),
                )  # fmt: skip

                def action() -> int:
                    docker("stop", service.name)
                    docker("rm", service.name)
                    docker(
                        "run", "-d", "--name", service.name, "--network", "host",
                        "--restart", "unless-stopped", "-e", f"PORT={service.port}",
                        f"{service.repo}:2.0.0",
                    )  # fmt: skip
                    deadline = time.monotonic() + 30
                    while service.serving() is None and time.monotonic() < deadline:
                        time.sleep(0.02)
                    return 0
            else:

                def action() -> int:
                    return service.deploy().code

            return under_load(service, action)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--overhead-requests", type=int, default=1000)
    args = parser.parse_args()
    rows = []
    for case in ("instant-boot", "2s-boot", "rollback"):
        modes = ["handoff", "restart"] + ([] if case == "rollback" else ["bash"])
        if case == "instant-boot":
            modes.insert(1, "handoff-no-drain")
        for mode in modes:
            rows.append((case, mode, run_case(case, mode)))
    print(
        "| case | mode | exit | requests (≈rps) | failed, new connections | failed, keep-alive "
        "| failed, keep-alive retrying | failed, 2 s requests | failed, bridge client "
        "| p50 / p99 outside (ms) | p50 / p99 during (ms) | deploy (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case, mode, r in rows:
        print(
            f"| {case} | {mode} | {r['exit']} | {r['requests']} ({r['rps']}) | {r['failed_new']} "
            f"| {r['failed_keepalive']} | {r['failed_retrying']} | {r['slow']} | {r['bridge']} "
            f"| {r['p50_outside_ms']:.1f} / {r['p99_outside_ms']:.1f} "
            f"| {r['p50_during_ms']:.1f} / {r['p99_during_ms']:.1f} | {r['deploy_s']:.1f} |"
        )
    d50, d99, r50, r99 = anyio.run(redirect_overhead, args.overhead_requests)
    print()
    print(f"Redirect overhead ({args.overhead_requests} GETs each, new connection per request):")
    print("| path | p50 (ms) | p99 (ms) |\n|---|---|---|")
    print(f"| direct to the port | {d50:.3f} | {d99:.3f} |")
    print(f"| through the nftables redirect | {r50:.3f} | {r99:.3f} |")


if __name__ == "__main__":
    main()
