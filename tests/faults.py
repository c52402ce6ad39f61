"""The fault engine: a second dockerd that the fault tests stop, restart and "reboot".

The main engine is shared by every test and must never restart, so the faults strike
a dockerd of their own. It runs in this machine's network namespace: host-network
containers listen on this loopback, and the tool's nftables handoff and its count of
connections in /proc work as they do on the main engine. It has its own socket, data
root, exec root, pid file and cgroup parent, and no bridge and no iptables rules of its
own (the main engine's chains are left alone; host-network services only).

Standard library only: ``scripts/test-faults.sh`` runs ``python3 tests/faults.py start``
before the project's virtualenv may exist, so its command line is written once, here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("RU_FAULT_ROOT", "/var/lib/rolling-update-faults"))
RUN = Path("/run/ru-fault")
SOCKET = RUN / "docker.sock"
HOST = f"unix://{SOCKET}"
PIDFILE = RUN / "docker.pid"
LOG = ROOT / "dockerd.log"
DOCKER = os.environ.get("DOCKER_CLI", "/usr/bin/docker")

# dockerd answers within a few seconds of its start; its shutdown stops every container
# (without live-restore) within their stop timeouts (10 s by default) on top.
START_LIMIT = 60.0
STOP_LIMIT = 60.0


class FaultEngineError(RuntimeError):
    """The fault engine did not start or stop within its limit."""


BRIDGE = "ru-fault0"
BRIDGE_ADDRESS = "10.232.0.1/24"


def command(*, live_restore: bool) -> list[str]:
    """dockerd's command line; ``live_restore`` keeps containers running through its restart."""
    args = [
        "dockerd",
        "--host",
        HOST,
        "--data-root",
        str(ROOT / "docker"),
        "--exec-root",
        str(RUN / "exec"),
        "--pidfile",
        str(PIDFILE),
        "--cgroup-parent",
        "ru-fault",
        # A bridge of its own and no iptables chains: nothing to clash with the main
        # engine's. Not --bridge=none: dockerd then deletes the interface docker0 at start
        # (removeDefaultBridgeInterface), which is the main engine's default bridge.
        f"--bridge={BRIDGE}",
        "--iptables=false",
        "--ip-masq=false",
    ]
    return [*args, "--live-restore"] if live_restore else args


def pid() -> int | None:
    """The running fault dockerd's pid, or None."""
    try:
        found = int(PIDFILE.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(found, 0)
    except ProcessLookupError:
        return None
    return found


def answers() -> bool:
    """Whether the fault engine answers on its socket."""
    try:
        done = subprocess.run(
            [DOCKER, "-H", HOST, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def restoring() -> bool | None:
    """Whether the running fault engine has live-restore (None: it does not run)."""
    found = pid()
    if found is None:
        return None
    try:
        args = Path(f"/proc/{found}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return b"--live-restore" in args


def start(*, live_restore: bool = False) -> None:
    """Start the fault engine (if it does not run) and wait until it answers."""
    if pid() is None:
        if not Path(f"/sys/class/net/{BRIDGE}").exists():
            subprocess.run(["ip", "link", "add", BRIDGE, "type", "bridge"], check=True)
            subprocess.run(["ip", "addr", "add", BRIDGE_ADDRESS, "dev", BRIDGE], check=True)
            subprocess.run(["ip", "link", "set", BRIDGE, "up"], check=True)
        # A killed dockerd leaves its pid file behind, and the next start refuses.
        PIDFILE.unlink(missing_ok=True)
        RUN.mkdir(parents=True, exist_ok=True)
        ROOT.mkdir(parents=True, exist_ok=True)
        with LOG.open("ab") as log:
            # setsid -f: not our child (stopped, it would linger as our zombie, its pid alive).
            subprocess.run(
                ["setsid", "-f", *command(live_restore=live_restore)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                check=True,
                timeout=10,
            )
    deadline = time.monotonic() + START_LIMIT
    while not answers():
        if time.monotonic() > deadline:
            raise FaultEngineError(
                f"the fault engine did not answer within {START_LIMIT:g}s: {LOG}"
            )
        time.sleep(0.1)


def stop() -> None:
    """Stop the fault engine as a service manager does (SIGTERM) and wait for its exit.

    Without live-restore its containers are stopped with it; with it, they run on.
    """
    found = pid()
    if found is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(found, signal.SIGTERM)
    deadline = time.monotonic() + STOP_LIMIT
    while pid() is not None:
        if time.monotonic() > deadline:
            raise FaultEngineError(f"the fault engine did not stop within {STOP_LIMIT:g}s: {LOG}")
        time.sleep(0.05)


def restart(*, live_restore: bool) -> None:
    """Stop the fault engine, then start it with (or without) live-restore."""
    stop()
    start(live_restore=live_restore)


def ensure(*, live_restore: bool) -> None:
    """The fault engine running with this live-restore setting (restarted only if needed)."""
    if restoring() != live_restore:
        restart(live_restore=live_restore)
    else:
        start(live_restore=live_restore)


if __name__ == "__main__":
    verbs = {"start": start, "stop": stop}
    if len(sys.argv) != 2 or sys.argv[1] not in verbs:
        sys.exit(f"usage: {sys.argv[0]} start|stop")
    verbs[sys.argv[1]]()
