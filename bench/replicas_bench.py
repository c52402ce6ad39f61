"""Several replicas rolled one at a time: a roll's wall time, and what clients see through a
round-robin front made of nftables' own load balance.

    .venv/bin/python -m bench.replicas_bench [--repeat N] [--counts 1 2 4] [--clients C]

Needs what the tests need (`bash scripts/test-env.sh`) and root (it writes nftables). Each
roll is the one of tests/test_replicas_e2e.py: the stand-in (tests/app) ticking every 3 s,
the example config's tick actions, replica 1 ticking and the others drained, from 1.0.0 to
2.0.0 with the handoff, replica after replica. ``--counts`` replicas (``replicas = 1`` is
the plain service, as a user with one container has it), each count rolled ``--repeat``
times per front.

The front hands each new connection to the next replica's production port: one nat rule,
``numgen inc mod N map { 0 : port1, 1 : port2, ... }``, in a table of the bench's own
(:data:`FRONT_TABLE`, removed at the end whatever happens). Two fronts, each roll under
one of them:

- **host**: the table on this host, ``output`` hook, for clients on 127.0.0.1 (``redirect
  to :numgen ...``). A connection is translated once, by the first nat rule it meets, so a
  connection the front sent to a replica's port never meets that replica's handoff
  redirect: the front by-passes the handoff.
- **netns**: the table in a network namespace of its own (a container on the default
  bridge), as a load balancer on another machine would be: it takes connections to its
  address, ``dnat`` them to the host's docker0 address and the next replica's port, and
  ``masquerade`` them. They reach the host as new connections (conntrack is per
  namespace), in ``prerouting``, where the replica's handoff redirect applies.

Load (bench/load.py, the handoff bench's): ``--clients`` clients on this host, each opening
a new connection per request and starting one every 20 ms (at most 50 requests/s each),
from 2 s before the roll to 2 s after it. Every answer names the container that gave it
(the stand-in's ``port``), so each request is put on its replica, and on the replica's
production container or its green.

Prints the tables, and why each request failed (with the roll's last log event before it);
asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.deploy_bench import spread, stamp
from bench.handoff_bench import Deployed, Lane, Sample, docker0, label, switch_used, under_load
from rolling_update._config.settings import ReplicaConfig
from rolling_update._handoff.nft import table_name
from tests.support import BASE_IMAGE, Collector, Run, Service, docker, free_port, swapped
from tests.test_replicas_e2e import TICKS, Replicas, _port_block

OLD, NEW = "1.0.0", "2.0.0"
COUNTS = (1, 2, 4)
FRONTS = ("host", "netns")
INTERVAL = 0.02
FRONT_TABLE = "ru_replicas_bench_front"
"""The front's table: ``ip`` family, never the tool's ``rolling_update_`` prefix."""
STEP = 10
"""``service.replica_port_step``'s default: replica i serves on port + (i-1) * 10."""


class Roll(Replicas):
    """``count`` replicas of the stand-in, configured and run as the replicas e2e test runs
    its three; one replica is the plain service (``replicas = 1`` changes nothing)."""

    def __init__(self, service: Service, report_url: str, count: int) -> None:
        super().__init__(service, report_url)
        self.count = count
        service.port = _port_block(STEP, count)
        service.green_port = service.port + 1

    def config(self, *, on_failure: str = "stop") -> None:
        super().config(on_failure=on_failure)
        path = self.service.config_path
        text = path.read_text()
        path.write_text(swapped(text, [(r"replicas = 3\n", f"replicas = {self.count}\n")], "Roll"))

    @property
    def members(self) -> list[ReplicaConfig]:
        if self.count > 1:
            return super().members
        s = self.service
        return [
            ReplicaConfig(
                name=s.name, port=s.port, green_port=s.green_port, container=s.name,
                green_container=s.green,
            )
        ]  # fmt: skip

    def cleanup(self) -> None:
        for r in self.members:
            nft(f"delete table inet {table_name(r.name)}\n", check=False)


def nft(script: str, *, netns_pid: int | None = None, check: bool = True) -> None:
    """``nft -f -`` with ``script``: one transaction, on this host or in a process's netns."""
    enter = [] if netns_pid is None else ["nsenter", "-t", str(netns_pid), "-n"]
    done = subprocess.run(
        [*enter, "nft", "-f", "-"], input=script, capture_output=True, text=True, check=False
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"nft: {done.stderr.strip()}\n{script}")


def balance(ports: Sequence[int]) -> str:
    """Each new connection to the next port in turn: nftables' own round robin."""
    mapping = ", ".join(f"{i} : {port}" for i, port in enumerate(ports))
    return f"numgen inc mod {len(ports)} map {{ {mapping} }}"


def host_front(port: int, ports: Sequence[int]) -> str:
    return (
        f"table ip {FRONT_TABLE} {{\n  chain output {{\n"
        "    type nat hook output priority -100; policy accept;\n"
        f"    ip daddr 127.0.0.1 tcp dport {port} redirect to :{balance(ports)}\n  }}\n}}\n"
    )


def netns_front(port: int, host: str, ports: Sequence[int]) -> str:
    # Masqueraded: the replicas answer the front, which answers the client (full NAT, as a
    # load balancer on another machine does); else answers would go straight to the client.
    return (
        f"table ip {FRONT_TABLE} {{\n"
        "  chain prerouting {\n    type nat hook prerouting priority -100; policy accept;\n"
        f"    tcp dport {port} dnat to {host} : {balance(ports)}\n  }}\n"
        "  chain postrouting {\n    type nat hook postrouting priority 100; policy accept;\n"
        f"    ip daddr {host} masquerade\n  }}\n}}\n"
    )


@contextlib.contextmanager
def front(kind: str, port: int, ports: Sequence[int]) -> Iterator[str]:
    """The front on ``port`` for the replicas' ``ports``; yields the address clients use.
    Its table (and its namespace's container) is removed however the block ends."""
    if kind == "host":
        try:
            nft(host_front(port, ports))
            yield "127.0.0.1"
        finally:
            nft(f"delete table ip {FRONT_TABLE}\n", check=False)
        return
    gateway = docker0()
    if gateway is None:
        raise RuntimeError("the host has no docker0: no namespace front")
    name = f"ru-replicas-bench-front-{uuid.uuid4().hex[:8]}"
    pid = None
    try:
        docker(
            "run", "-d", "--name", name, "--sysctl", "net.ipv4.ip_forward=1",
            BASE_IMAGE, "sleep", "3600",
        )  # fmt: skip
        pid = int(docker("inspect", "-f", "{{.State.Pid}}", name))
        nft(netns_front(port, gateway, ports), netns_pid=pid)
        yield docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name)
    finally:
        if pid is not None:
            nft(f"delete table ip {FRONT_TABLE}\n", netns_pid=pid, check=False)
        docker("rm", "-f", name, check=False)


@dataclass
class Rolled:
    """One roll under one front: the CLI's run and what the clients saw."""

    count: int
    kind: str
    members: list[ReplicaConfig]
    run: Run
    samples: list[Sample]
    causes: list[str]
    replica_s: list[float] = field(default_factory=list)
    drain_s: list[float] = field(default_factory=list)
    # Per replica, while it was rolled: failed requests, and the first to the last of them.
    failed_in: list[int] = field(default_factory=list)
    failing_span: list[float] = field(default_factory=list)

    def owner(self, port: int | None) -> tuple[int, str] | None:
        """The replica (from 1) whose production or green container serves on ``port``."""
        for i, m in enumerate(self.members, start=1):
            if port == m.port:
                return i, "production"
            if port == m.green_port:
                return i, "green"
        return None


def windows(run: Run, members: Sequence[ReplicaConfig]) -> list[list[dict[str, Any]]]:
    """Each replica's own log events, from its deploy's start (a roll binds ``host`` to the
    replica's name, also where it connects to every replica before the first begins)."""
    timed = [e for e in run.events if "timestamp" in e]
    if len(members) == 1:
        return [timed]
    found = []
    for m in members:
        mine = [e for e in timed if e.get("host") == m.name]
        began = [i for i, e in enumerate(mine) if e.get("event") == "deploy.started"]
        # A replica whose deploy never began (the roll stopped before it): no window.
        found.append(mine[began[0] :] if began else [])
    return found


def roll(count: int, kind: str, clients: int) -> Rolled:
    with tempfile.TemporaryDirectory() as tmp:
        service = Service(Path(tmp))
        collector = Collector()
        replicas = Roll(service, collector.url, count)
        try:
            replicas.config()
            replicas.start_blues(OLD)
            service.write_app(NEW, knobs=TICKS)
            members = replicas.members
            runs: list[Run] = []

            def action() -> Deployed:
                run = service.deploy(timeout=600)
                runs.append(run)
                marks = [(stamp(e), label(e)) for e in run.events if "timestamp" in e]
                return Deployed(run.code, switch_used(run.events), marks)

            port = free_port()
            with front(kind, port, [m.port for m in members]) as address:
                lanes = [Lane(f"{kind} front", address, clients, INTERVAL)]
                # The clients go to the front's port: the load's target is the front.
                row = under_load(
                    dataclasses.replace(service, port=port), lanes, action, bridge_client=False
                )
        finally:
            replicas.cleanup()
            service.cleanup()
            collector.server.shutdown()
            collector.server.server_close()
    rolled = Rolled(count, kind, members, runs[0], row["samples"], row["causes"])
    for events in windows(rolled.run, members):
        if not events:
            rolled.failed_in.append(0)
            continue
        began, ended = stamp(events[0]), stamp(events[-1])
        rolled.replica_s.append(ended - began)
        drained = [e["seconds"] for e in events if e.get("event") == "switch.blue_drained"]
        rolled.drain_s.extend(drained)
        failed = [s.at for s in rolled.samples if not s.ok and began <= s.at <= ended]
        rolled.failed_in.append(len(failed))
        rolled.failing_span.append(max(failed) - min(failed) if failed else 0.0)
    return rolled


def failed(r: Rolled) -> int:
    return sum(not s.ok for s in r.samples)


def med(values: Sequence[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f}" if values else "–"


def groups(
    rolls: Sequence[Rolled], counts: Sequence[int]
) -> Iterator[tuple[int, str, list[Rolled]]]:
    """The rolls of each count and front, in the table's order."""
    for count in counts:
        for kind in FRONTS:
            mine = [r for r in rolls if r.count == count and r.kind == kind]
            if mine:
                yield count, kind, mine


def print_walls(rolls: Sequence[Rolled], counts: Sequence[int]) -> None:
    print(
        "| replicas | front | exits | rolls counted | roll wall time min / median / max (s) "
        "| first replica (build, migrate), median (s) | each later replica, median (s) "
        "| blue's drain, median (s) | requests per roll "
        "| failed per roll | failed per replica rolled, median | failing span per replica, "
        "median (s) |"
    )
    print("|---" * 12 + "|")
    for count, kind, mine in groups(rolls, counts):
        exits = " / ".join(str(r.run.code) for r in mine)
        # A roll that stopped is no roll's wall time (its reason is printed as it ends).
        mine = [r for r in mine if r.run.code == 0] or mine
        later = [s for r in mine for s in r.replica_s[1:]]
        print(
            f"| {count} | {kind} | {exits} | {len(mine)} "
            f"| {spread([r.run.seconds for r in mine], '', 1).strip()} "
            f"| {med([r.replica_s[0] for r in mine if r.replica_s], 1)} | {med(later, 1)} "
            f"| {med([d for r in mine for d in r.drain_s])} "
            f"| {' / '.join(str(len(r.samples)) for r in mine)} "
            f"| {' / '.join(str(failed(r)) for r in mine)} "
            f"| {med([f for r in mine for f in r.failed_in], 0)} "
            f"| {med([s for r in mine for s in r.failing_span])} |",
            flush=True,
        )


def print_shares(rolls: Sequence[Rolled], counts: Sequence[int]) -> None:
    """Who answered, summed over a count's rolls: each replica's production container and
    green, and the requests that failed while that replica was rolled."""
    print(
        "\n| replicas | front | replica | answered by its production container "
        "| answered by its green | share of answered | failed while it was rolled |"
    )
    print("|---" * 7 + "|")
    for count, kind, mine in groups(rolls, counts):
        by: Counter[tuple[int, str] | None] = Counter()
        for r in mine:
            by.update(r.owner(s.port) for s in r.samples if s.ok)
        answered = sum(by.values())
        for i in range(1, count + 1):
            production, green = by[(i, "production")], by[(i, "green")]
            share = 100 * (production + green) / answered if answered else 0.0
            print(
                f"| {count} | {kind} | {i} | {production} | {green} | {share:.1f}% "
                f"| {sum(r.failed_in[i - 1] for r in mine)} |",
                flush=True,
            )
        if by[None]:
            print(f"| {count} | {kind} | (another port) | {by[None]} | | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rolls per count and front")
    parser.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    parser.add_argument(
        "--clients", type=int, default=4, help="new-connection clients, each every 20 ms"
    )
    parser.add_argument("--fronts", nargs="+", default=list(FRONTS), choices=FRONTS)
    args = parser.parse_args()
    print(
        f"rolling_update replicas benchmark, engine "
        f"{docker('version', '--format', '{{.Server.Version}}')}; {args.repeat} rolls per "
        f"count and front; load: {args.clients} new-connection clients every "
        f"{INTERVAL * 1000:g} ms through the front\n"
    )
    rolls = []
    for _ in range(args.repeat):
        for count in args.counts:
            for kind in args.fronts:
                r = roll(count, kind, args.clients)
                why = "" if r.run.code == 0 else f" ({r.run.stderr.strip().splitlines()[-1]})"
                print(
                    f"- {count} replica(s), {kind} front: exit {r.run.code}{why}, "
                    f"{r.run.seconds:.1f} s, {failed(r)} of {len(r.samples)} failed",
                    flush=True,
                )
                rolls.append(r)
    print()
    print_walls(rolls, args.counts)
    print_shares(rolls, args.counts)
    print("\nWhy requests failed (client: count × cause [the roll's last log event before]):")
    for r in rolls:
        for line in r.causes:
            print(f"- {r.count} replica(s): {line}")
    print(f"\nran until {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
