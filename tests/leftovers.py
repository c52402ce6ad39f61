"""What a test run cut short (CI's time limit, Ctrl-C, a machine stopped mid-run) leaves
on the hosts the suite owns, swept once per session before its first test that uses one.

A killed run skips every fixture's clean-up. Its blue, started ``unless-stopped``, comes
back with ru-host2's engine and keeps that host's fixed port 5221, so every later two-host
test's blue crash-loops there; a fault case leaves the fault engine's disk full or its
memory limited, a link-down case ru-host2 unreachable (an out-of-memory or disk-full case,
its memory limited or its disk full). Only ru-host2 and the fault engine are swept: each
serves one session at a time (fixed ports, one shared disk and memory limit), while this
machine's own engine may be running another session's containers.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests import faults
from tests.hosts import HOST2_CGROUP, HOST2_DISK, HOST2_SOCKET
from tests.support import DOCKER


def _run(*command: str) -> str:
    found = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return found.stdout


def _remove_every_container(socket: str) -> None:
    """An engine that does not run has nothing to sweep."""
    docker = (DOCKER, "-H", f"unix://{socket}")
    ids = _run(*docker, "ps", "-aq").split()
    if ids:
        _run(*docker, "rm", "-f", "-v", *ids)


def sweep_host2() -> None:
    """ru-host2 as scripts/test-hosts.sh made it: linked, no container, no tool's table,
    its containers' memory unlimited, its disk free."""
    _run("ip", "link", "set", "ru-h2a", "up")
    # The memory and the disk first: containers stalled at their limit stop slowly, and a
    # full data root can fail the removals.
    faults.unlimit_memory(HOST2_CGROUP)
    faults.free(HOST2_DISK)
    _remove_every_container(HOST2_SOCKET)
    if not Path("/run/netns/ru-host2").exists():
        return
    prefix = ("ip", "netns", "exec", "ru-host2")
    for table in re.findall(
        r"^table inet (rolling_update_\S+)$", _run(*prefix, "nft", "list", "tables"), re.M
    ):
        _run(*prefix, "nft", "delete", "table", "inet", table)


def sweep_fault_engine() -> None:
    """The fault engine as scripts/test-faults.sh made it: no container, its disk free, its
    containers' memory unlimited."""
    # The disk first: a full data root can fail the removals.
    faults.free()
    _remove_every_container(str(faults.SOCKET))
    faults.unlimit_memory()
