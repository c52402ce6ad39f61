"""A second Docker host for the multi-host tests: `ru-host2`, made by scripts/test-hosts.sh.

It is a network namespace with its own dockerd (unix socket, and tcp+TLS on
its address), an sshd, and its own address on a veth pair; 5221/5222 are free
there. The test service runs on this machine's engine (free ports) and on
ru-host2 (5221/5222), under one name.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from rolling_update._handoff.nft import table_name
from tests.support import BASE_IMAGE, DOCKER, Service, get_json, require_engine

HOST2 = "10.231.2.2"
HOST2_SOCKET = "/run/ru-host2/docker.sock"
# Its dockerd's --cgroup-parent (scripts/test-hosts.sh): its containers' memory shares it.
HOST2_CGROUP = "ru-host2"
HOST2_PORT, HOST2_GREEN = 5221, 5222
HOSTS_ROOT = Path("/var/lib/rolling-update-hosts")
# Its data root's own filesystem (scripts/test-hosts.sh), which a test may fill.
HOST2_DISK = HOSTS_ROOT / "ru-host2" / "disk"
SSH_CONFIG = HOSTS_ROOT / "ssh" / "config"
CERTS = HOSTS_ROOT / "certs"


def docker2(*args: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(
        [DOCKER, "-H", f"unix://{HOST2_SOCKET}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"docker(ru-host2) {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


HOST2_PIDFILE = Path("/run/ru-host2/docker.pid")
HOST2_LOG = HOSTS_ROOT / "ru-host2" / "dockerd.log"
# Its shutdown stops every container (no live-restore) within their stop timeouts.
HOST2_ENGINE_LIMIT = 60.0


def _host2_engine_pid() -> int | None:
    try:
        found = int(HOST2_PIDFILE.read_text().strip())
        os.kill(found, 0)
    except (OSError, ValueError):
        return None
    return found


def _host2_engine_answers() -> bool:
    try:
        docker2("version", "--format", "{{.Server.Version}}", timeout=5)
    except (RuntimeError, subprocess.TimeoutExpired):
        return False
    return True


LIVE_RESTORE = "--live-restore"


def restart_host2_engine(
    *, live_restore: bool = False, while_down: Callable[[], None] | None = None
) -> None:
    """Restart ru-host2's dockerd as a service manager does (SIGTERM, then start it again),
    with the command line scripts/test-hosts.sh gave it, in the host's network namespace;
    started again with ``--live-restore`` or without (its containers then keep running
    through its next restart, or stop with it). ``while_down`` runs once it has stopped."""
    found = _host2_engine_pid()
    assert found is not None, "ru-host2's dockerd does not run: run scripts/test-hosts.sh"
    command = Path(f"/proc/{found}/cmdline").read_bytes().decode().split("\0")[:-1]
    # The setting takes effect from this start: the engine now stopping keeps or stops its
    # containers by the setting it was started with (see host2_live_restore).
    command = [arg for arg in command if arg != LIVE_RESTORE]
    if live_restore:
        command.append(LIVE_RESTORE)
    os.kill(found, signal.SIGTERM)
    deadline = time.monotonic() + HOST2_ENGINE_LIMIT
    try:
        while _host2_engine_pid() is not None:
            assert time.monotonic() < deadline, f"ru-host2's dockerd did not stop: {HOST2_LOG}"
            time.sleep(0.05)
        if while_down is not None:
            while_down()
    finally:
        # Started again whatever happened: every later test needs ru-host2's engine.
        if _host2_engine_pid() is None:
            with HOST2_LOG.open("ab") as log:
                # setsid -f: not our child, as the script's nohup leaves it.
                subprocess.run(
                    ["setsid", "-f", "nsenter", "--net=/run/netns/ru-host2", *command],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    check=True,
                    timeout=10,
                )
    while not _host2_engine_answers():
        assert time.monotonic() < deadline, f"ru-host2's dockerd did not answer: {HOST2_LOG}"
        time.sleep(0.1)


def reboot_host2(service_name: str) -> None:
    """ru-host2 goes down and comes back: its engine stops (every container with it), the
    kernel forgets the tool's nftables table there, the engine starts again and brings
    back what its restart policies say."""

    def forget_tables() -> None:
        subprocess.run(
            [
                "nsenter",
                "--net=/run/netns/ru-host2",
                "nft",
                "delete",
                "table",
                "inet",
                table_name(service_name),
            ],
            check=False,
            capture_output=True,
            timeout=10,
        )

    restart_host2_engine(live_restore=False, while_down=forget_tables)


def host2_live_restore() -> bool:
    """Whether ru-host2's dockerd runs with ``--live-restore``."""
    found = _host2_engine_pid()
    assert found is not None, "ru-host2's dockerd does not run: run scripts/test-hosts.sh"
    return LIVE_RESTORE in Path(f"/proc/{found}/cmdline").read_bytes().decode().split("\0")


def ensure_host2_engine(*, live_restore: bool) -> None:
    """ru-host2's dockerd running with this live-restore setting (restarted if it differs)."""
    if host2_live_restore() != live_restore:
        restart_host2_engine(live_restore=live_restore)


def require_host2() -> None:
    """Fail (not skip) without the second host: CI must never pass by skipping these."""
    try:
        docker2("image", "inspect", BASE_IMAGE, timeout=10)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"needs the second host: run `bash scripts/test-hosts.sh` first ({exc})")


NFT_IMAGE = "rolling-update-test-nft:2"


def nft_image() -> str:
    """An image of nft and cat alone (this machine's binaries and the libraries they link),
    loaded into ru-host2 once: a helper image that brings its own tools."""
    with contextlib.suppress(RuntimeError):
        docker2("image", "inspect", NFT_IMAGE)
        return NFT_IMAGE
    files: list[str] = []
    for tool in ("nft", "cat"):
        binary = shutil.which(tool) or f"/usr/sbin/{tool}"
        linked = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
        files += [binary, *re.findall(r"(/\S+) \(0x", linked.stdout)]
    files = sorted(set(files))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in files:
            # The file's contents under the name the loader looks for (links resolved).
            tar.add(os.path.realpath(path), arcname=path.lstrip("/"))
    subprocess.run(
        [DOCKER, "-H", f"unix://{HOST2_SOCKET}", "import", "-", NFT_IMAGE],
        input=buffer.getvalue(),
        capture_output=True,
        check=True,
        timeout=120,
    )
    return NFT_IMAGE


def _nft2(*args: str) -> int:
    """``nft`` in ru-host2's network namespace: its exit code."""
    command = ["ip", "netns", "exec", "ru-host2", "nft", *args]
    return subprocess.run(command, capture_output=True, check=False).returncode


class TwoHosts:
    """One test service on this machine's engine ("local") and on ru-host2 ("h2")."""

    def __init__(self, service: Service) -> None:
        self.svc = service

    def serving2(self, port: int = HOST2_PORT) -> str | None:
        body = get_json(f"http://{HOST2}:{port}/api/brain/hardening/status")
        return body.get("version") if isinstance(body, dict) else None

    def start_blue2(self, version: str = "1.0.0") -> None:
        """Blue on ru-host2, as the reference script starts it, from the same app."""
        svc = self.svc
        app = svc.write_app(version)
        docker2(
            "build",
            "-q",
            "--build-arg",
            f"BASE={BASE_IMAGE}",
            "-t",
            f"{svc.repo}:{version}",
            str(app),
        )
        docker2(
            "run", "-d", "--name", svc.name, "--network", "host", "--restart", "unless-stopped",
            "-e", f"PORT={HOST2_PORT}", "-e", "ENV_REGION=hk",
            # Its Brain's database is hk's (the self-check compares it with ENV_REGION).
            "-e", "DB_REGION=hk", f"{svc.repo}:{version}",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while self.serving2() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"blue on ru-host2 did not come up: {docker2('logs', svc.name, check=False)}"
                )
            time.sleep(0.05)

    def start_blues(self, version: str = "1.0.0") -> None:
        self.svc.start_blue(version)
        self.start_blue2(version)

    def config(
        self,
        *,
        engine2: str = "ssh",
        socket2: str = HOST2_SOCKET,
        extra: str = "",
        h2_extra: str = "",
        env2: Mapping[str, object] | None = None,
        **sections: str,
    ) -> Path:
        """The service's config with [[hosts]]: local (canary) first, then ru-host2;
        ``socket2``: the engine socket SSH forwards to there (ru-host2 shares this
        machine's files: a proxy's socket here is reached through its sshd); ``env2``:
        h2's own env for its new containers (knobs of tests/app/app.py: green misbehaves
        there alone); ``sections`` replace whole tables, as for :meth:`Service.config`."""
        svc = self.svc
        if engine2 == "ssh":
            h2 = (
                f'engine = "ssh://root@{HOST2}"\nsocket = "{socket2}"\n'
                f'ssh_config = "{SSH_CONFIG}"\n'
            )
        elif engine2 == "ssh-probe":
            h2 = (
                f'engine = "ssh://root@{HOST2}"\nsocket = "{socket2}"\n'
                f'ssh_config = "{SSH_CONFIG}"\nprobe = "ssh"\n'
            )
        else:
            h2 = f'engine = "tcp://{HOST2}:2376"\ncert_path = "{CERTS}"\n'
        hosts = (
            '[[hosts]]\nname = "local"\nengine = "unix:///var/run/docker.sock"\n\n'
            f'[[hosts]]\nname = "h2"\n{h2}port = {HOST2_PORT}\ngreen_port = {HOST2_GREEN}\n'
            f"{h2_extra}"
            '[hosts.env]\nENV_REGION = "hk"\n'
            + "".join(f'{key} = "{value}"\n' for key, value in (env2 or {}).items())
            + "\n"
        )
        # Table names only: none of them is Service.config's own ``env``.
        configure: Callable[..., Path] = svc.config
        return configure(extra=hosts + extra, **sections)

    def containers2(self) -> list[str]:
        names = docker2("ps", "-a", "--filter", f"name={self.svc.name}", "--format", "{{.Names}}")
        name = self.svc.name
        return sorted(n for n in names.split() if n == name or n.startswith(name + "-"))

    def redirected2(self) -> bool:
        found = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                "ru-host2",
                "nft",
                "list",
                "table",
                "inet",
                table_name(self.svc.name),
            ],
            capture_output=True,
            check=False,
        )
        return found.returncode == 0

    def cleanup(self) -> None:
        svc = self.svc
        names = docker2("ps", "-aq", "--filter", f"name={svc.name}", check=False).split()
        if names:
            docker2("rm", "-f", "-v", *names, check=False)
        images = docker2("images", "-q", svc.repo, check=False).split()
        if images:
            docker2("rmi", "-f", *set(images), check=False)
        docker2("volume", "rm", "-f", svc.marker, check=False)
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                "ru-host2",
                "nft",
                "delete",
                "table",
                "inet",
                table_name(svc.name),
            ],
            capture_output=True,
            check=False,
        )


@pytest.fixture
def two_hosts(service: Service, host2_swept: None) -> Iterator[TwoHosts]:
    require_engine()
    require_host2()
    hosts = TwoHosts(service)
    try:
        yield hosts
    finally:
        hosts.cleanup()
