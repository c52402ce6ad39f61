"""The fault engine: a second dockerd that the fault tests stop, restart and "reboot".

The main engine is shared by every test and must never restart, so the faults strike
a dockerd of their own. It runs in this machine's network namespace: host-network
containers listen on this loopback, and the tool's nftables handoff and its count of
connections in /proc work as they do on the main engine. It has its own socket, data
root, exec root, pid file and cgroup parent, and no bridge and no iptables rules of its
own (the main engine's chains are left alone; host-network services only). Its data root
is on a filesystem of its own (a sparse file, loop-mounted), which a test may fill
(:func:`fill`) without touching the machine's disk; its containers' memory cgroups
share one parent (:func:`memory_parent`), which a test may limit as a host's RAM.

Standard library only: ``scripts/test-faults.sh`` runs ``python3 tests/faults.py start``
before the project's virtualenv may exist, so its command line is written once, here.
"""

from __future__ import annotations

import contextlib
import errno
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
# The data root's filesystem: big enough for the base image (about 250 MB) and the
# tests' builds, sparse, so it takes on the machine's disk only what is written to it.
DISK_IMAGE = ROOT / "data-root.ext4"
DISK_SIZE = "4G"
DISK = ROOT / "disk"
DATA_ROOT = DISK / "docker"
# The one file fill() writes on a disk.
FILLER = "filler"
CGROUP_PARENT = "ru-fault"
MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")
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
        str(DATA_ROOT),
        "--exec-root",
        str(RUN / "exec"),
        "--pidfile",
        str(PIDFILE),
        "--cgroup-parent",
        CGROUP_PARENT,
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


def running_command() -> list[str] | None:
    """The running fault dockerd's command line (None: it does not run)."""
    found = pid()
    if found is None:
        return None
    try:
        args = Path(f"/proc/{found}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return [arg.decode() for arg in args if arg]


def restoring() -> bool | None:
    """Whether the running fault engine has live-restore (None: it does not run)."""
    args = running_command()
    return None if args is None else "--live-restore" in args


def mounted() -> bool:
    """Whether the data root's own filesystem is mounted."""
    return subprocess.run(["mountpoint", "-q", str(DISK)], check=False).returncode == 0


def mount() -> None:
    """The data root's filesystem made (once) and mounted (if it is not)."""
    if mounted():
        return
    ROOT.mkdir(parents=True, exist_ok=True)
    if not DISK_IMAGE.exists():
        made = DISK_IMAGE.with_suffix(".tmp")
        subprocess.run(["truncate", "-s", DISK_SIZE, str(made)], check=True)
        # No blocks reserved for root: dockerd runs as root and must meet a full disk.
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(made)], check=True)
        made.rename(DISK_IMAGE)
    DISK.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(DISK_IMAGE), str(DISK)], check=True)


def fill(*, leave_mb: int = 0, disk: Path = DISK) -> None:
    """Fill a data root's filesystem (the fault engine's, or ``disk``: ru-host2's) with one
    file, leaving ``leave_mb`` MiB free (0: to its last block)."""
    if not os.path.ismount(disk):
        # Unmounted (a machine started again without its scripts), it is the machine's disk.
        raise FaultEngineError(f"{disk} is not a filesystem of its own: run the test scripts")
    with (disk / FILLER).open("ab") as f:
        # The extents' own metadata takes blocks too: take the room in shrinking pieces.
        for piece in (1 << 30, 1 << 20, 1 << 12):
            while True:
                stats = os.statvfs(disk)
                room = stats.f_bavail * stats.f_frsize - (leave_mb << 20)
                if room < piece:
                    break
                try:
                    os.posix_fallocate(f.fileno(), os.fstat(f.fileno()).st_size, piece)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break


def free(disk: Path = DISK) -> None:
    """Remove what :func:`fill` wrote on ``disk``."""
    (disk / FILLER).unlink(missing_ok=True)


def memory_parent(container_pid: int, name: str = CGROUP_PARENT) -> Path:
    """The memory cgroup that holds every container of an engine started with the
    relative ``--cgroup-parent name`` (the fault engine's; ru-host2's is its own), found
    from one of its containers' processes: dockerd places its cgroup parent under its
    own memory cgroup, wherever the machine started it."""
    for line in Path(f"/proc/{container_pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            cgroup = MEMORY_CGROUPS / path.lstrip("/")
            for parent in (cgroup, *cgroup.parents):
                if parent.name == name:
                    return parent
    raise FaultEngineError(f"process {container_pid} has no memory cgroup under {name}")


def limit_memory(container_pid: int, room_mb: int, name: str = CGROUP_PARENT) -> Path:
    """Limit the memory of every container under ``name`` (see :func:`memory_parent`) to
    what they use now plus ``room_mb`` MiB, as a host's RAM; returns the cgroup limited."""
    parent = memory_parent(container_pid, name)
    used = int((parent / "memory.usage_in_bytes").read_text())
    (parent / "memory.limit_in_bytes").write_text(str(used + (room_mb << 20)))
    return parent


def unlimit_memory(name: str = CGROUP_PARENT) -> None:
    """Lift every limit :func:`limit_memory` set under ``name``, wherever it is."""
    for parent in MEMORY_CGROUPS.glob(f"**/{name}"):
        with contextlib.suppress(OSError):
            (parent / "memory.limit_in_bytes").write_text("-1")


def start(*, live_restore: bool = False) -> None:
    """Start the fault engine (if it does not run) and wait until it answers.

    One that runs with another data root (set up before the data root had a filesystem
    of its own) is stopped first and started on the new one.
    """
    running = running_command()
    if running is not None and str(DATA_ROOT) not in running:
        stop()
    if pid() is None:
        mount()
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


def ready() -> None:
    """The fault engine started, and its disk freed of a filler a test cut short left."""
    start()
    free()


if __name__ == "__main__":
    verbs = {"start": ready, "stop": stop}
    if len(sys.argv) != 2 or sys.argv[1] not in verbs:
        sys.exit(f"usage: {sys.argv[0]} start|stop")
    verbs[sys.argv[1]]()
