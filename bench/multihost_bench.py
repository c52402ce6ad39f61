"""What several hosts cost: rollout wall time for 1, 2 and 3 hosts, image copy without a
registry by image size, and what a remote engine adds to a switch (handoff and restart).

    bash scripts/test-env.sh && bash scripts/test-hosts.sh 2 \\
      && .venv/bin/python -m bench.multihost_bench --runs 3

The hosts are this machine's engine and ru-host2, ru-host3 (a dockerd each in a
network namespace, reached over ssh://). Prints tables; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import structlog

from rolling_update._engine.docker import DockerEngine
from rolling_update._engine.registry import registry_auth
from rolling_update._hosts.rollout import copy_image
from tests.hosts import HOSTS_ROOT, SSH_CONFIG
from tests.support import BASE_IMAGE, DOCKER, Prober, Service, docker, get_json


def host_docker(n: int, *args: str, check: bool = True) -> str:
    command = [DOCKER, "-H", f"unix:///run/ru-host{n}/docker.sock", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker(ru-host{n}) {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def address(n: int) -> str:
    return f"10.231.{n}.2"


def serving(n: int) -> str | None:
    body = get_json(f"http://{address(n)}:5221/api/brain/hardening/status")
    return body.get("version") if isinstance(body, dict) else None


def start_remote_blue(service: Service, n: int, version: str) -> None:
    app = service.write_app(version)
    tag = f"{service.repo}:{version}"
    host_docker(n, "build", "-q", "--build-arg", f"BASE={BASE_IMAGE}", "-t", tag, str(app))
    host_docker(
        n, "run", "-d", "--name", service.name, "--network", "host",
        "--restart", "unless-stopped", "-e", "PORT=5221", tag,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while serving(n) is None and time.monotonic() < deadline:
        time.sleep(0.05)


def cleanup_remote(service: Service, n: int) -> None:
    ids = host_docker(n, "ps", "-aq", "--filter", f"name={service.name}", check=False).split()
    if ids:
        host_docker(n, "rm", "-f", "-v", *ids, check=False)
    images = host_docker(n, "images", "-q", service.repo, check=False).split()
    if images:
        host_docker(n, "rmi", "-f", *set(images), check=False)
    host_docker(n, "volume", "rm", "-f", service.marker, check=False)


def hosts_toml(remotes: Sequence[int], *, local: bool = True, mode: str = "handoff") -> str:
    text = '[[hosts]]\nname = "local"\nengine = "unix:///var/run/docker.sock"\n\n' if local else ""
    for n in remotes:
        text += (
            f'[[hosts]]\nname = "h{n}"\nengine = "ssh://root@{address(n)}"\n'
            f'socket = "/run/ru-host{n}/docker.sock"\nssh_config = "{SSH_CONFIG}"\n'
            "port = 5221\ngreen_port = 5222\n\n"
        )
    return text + f'[switch]\nmode = "{mode}"\n'


def wall_times(runs: int) -> list[tuple[str, list[float]]]:
    rows = []
    for label, remotes, parallel in (
        ("1 host (local)", [], 1),
        ("2 hosts (local, ssh)", [2], 1),
        ("3 hosts (local, ssh, ssh), parallel 1", [2, 3], 1),
        ("3 hosts (local, ssh, ssh), parallel 2", [2, 3], 2),
    ):
        seconds = []
        with tempfile.TemporaryDirectory() as tmp:
            service = Service(Path(tmp))
            try:
                service.start_blue("1.0.0")
                for n in remotes:
                    start_remote_blue(service, n, "1.0.0")
                extra = hosts_toml(remotes) + f"[rollout]\nparallel = {parallel}\n"
                service.config(extra=extra, verify="timeout = 10\nsoak = 1\n")
                for i in range(runs):
                    service.write_app(f"1.{i + 1}.0")
                    run = service.deploy(timeout=600)
                    if run.code != 0:
                        raise RuntimeError(f"{label}: exit {run.code}: {run.stderr}")
                    seconds.append(run.seconds)
            finally:
                service.cleanup()
                for n in remotes:
                    cleanup_remote(service, n)
        rows.append((label, seconds))
    return rows


@contextlib.contextmanager
def sized_image(tag: str, size: int) -> Iterator[str]:
    """The base image plus a ``size`` MB layer of random bytes, tagged ``tag`` here; removed
    from both engines after. Yields a scratch folder (an empty DOCKER_CONFIG)."""
    with tempfile.TemporaryDirectory() as tmp:
        context = Path(tmp)
        (context / "blob").write_bytes(os.urandom(size * 2**20))
        (context / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nCOPY blob /blob\n")
        docker("build", "-q", "-t", tag, str(context))
        (context / "blob").unlink()
        try:
            yield tmp
        finally:
            docker("rmi", "-f", tag, check=False)
            host_docker(2, "rmi", "-f", tag, check=False)


def copy_times(sizes: Sequence[int]) -> list[tuple[int, float, float]]:
    """(extra MB, tar MB, seconds) of streaming an image from here into ru-host2."""
    rows = []
    for size in sizes:
        tag = f"ru-bench-copy:{size}"
        with sized_image(tag, size):

            async def copy(tag: str = tag) -> dict[str, Any]:
                async with (
                    DockerEngine() as here,
                    DockerEngine("unix:///run/ru-host2/docker.sock") as there,
                ):
                    return await copy_image(here, there, tag, host="ru-host2")

            began = time.monotonic()
            found = anyio.run(copy)
            rows.append((size, found["copied_bytes"] / 2**20, time.monotonic() - began))
    return rows


REGISTRY = "10.231.2.1:5000"


def registry_times(sizes: Sequence[int]) -> list[tuple[int, float, float]]:
    """(extra MB, push seconds, pull seconds) through the test registry: only the layers
    the registry (push) or ru-host2 (pull) lacks travel."""
    rows = []
    for size in sizes:
        tag = f"{REGISTRY}/ru-bench-copy:{size}"
        with sized_image(tag, size) as scratch:

            async def copy(tag: str = tag, scratch: str = scratch) -> tuple[float, float]:
                auth = registry_auth(tag, {"DOCKER_CONFIG": scratch})
                async with (
                    DockerEngine() as here,
                    DockerEngine("unix:///run/ru-host2/docker.sock") as there,
                ):
                    began = time.monotonic()
                    await here.push_image(tag, auth=auth)
                    pushed = time.monotonic() - began
                    began = time.monotonic()
                    await copy_image(here, there, tag, host="ru-host2", auth=auth)
                    return pushed, time.monotonic() - began

            pushed, pulled = anyio.run(copy)
            rows.append((size, pushed, pulled))
    return rows


def downtime(runs: int) -> list[tuple[str, str, list[int], list[float]]]:
    """Failed probe requests and the longest gap, on this host vs ru-host2 (over SSH)."""
    rows = []
    for where in ("local", "ssh"):
        for mode in ("handoff", "restart"):
            failed: list[int] = []
            gaps: list[float] = []
            with tempfile.TemporaryDirectory() as tmp:
                service = Service(Path(tmp))
                try:
                    if where == "local":
                        service.start_blue("1.0.0")
                        extra = hosts_toml([], mode=mode)
                        url = service.version_url()
                    else:
                        start_remote_blue(service, 2, "1.0.0")
                        extra = hosts_toml([2], local=False, mode=mode)
                        url = f"http://{address(2)}:5221/api/brain/hardening/status"
                    service.config(extra=extra, verify="timeout = 10\nsoak = 1\n")
                    for i in range(runs):
                        service.write_app(f"1.{i + 1}.0")
                        with Prober(url) as prober:
                            run = service.deploy(timeout=600)
                            time.sleep(0.3)
                        if run.code != 0:
                            raise RuntimeError(f"{where}/{mode}: exit {run.code}: {run.stderr}")
                        failed.append(prober.failures)
                        gaps.append(prober.longest_gap())
                finally:
                    service.cleanup()
                    if where == "ssh":
                        cleanup_remote(service, 2)
            rows.append((where, mode, failed, gaps))
    return rows


def spread(values: Sequence[float], digits: int = 2) -> str:
    return " / ".join(
        f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", default="0,64,256", help="extra image MB, comma-separated")
    args = parser.parse_args()
    # The copies' own progress lines would break up the tables.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if not (HOSTS_ROOT / "ru-host3").exists():
        raise SystemExit("needs ru-host2 and ru-host3: run `bash scripts/test-hosts.sh 2` first")
    engine = docker("version", "--format", "{{.Server.Version}}")
    print(f"rolling_update multi-host benchmark, {args.runs} deploys per row, engine {engine}")
    print("hosts: this machine's engine; ru-host2/3 are dockerds in netns, over ssh://\n")

    print("| rollout (stand-in, soak 1 s)              | wall time min / median / max |")
    print("|-------------------------------------------|------------------------------|")
    for label, seconds in wall_times(args.runs):
        print(f"| {label:<41} | {spread(seconds) + ' s':<28} |")

    print("\n| image copy without registry (save → load) | tar MB | seconds | MB/s  |")
    print("|-------------------------------------------|--------|---------|-------|")
    for size, mb, took in copy_times([int(s) for s in args.sizes.split(",")]):
        label = f"base + {size} MB layer"
        print(f"| {label:<41} | {mb:6.0f} | {took:7.2f} | {mb / took:5.0f} |")

    print("\n| image copy through a registry (TLS, here) | push s  | pull s  |")
    print("|-------------------------------------------|---------|---------|")
    for size, pushed, pulled in registry_times([int(s) for s in args.sizes.split(",")]):
        label = f"base + {size} MB layer"
        print(f"| {label:<41} | {pushed:7.2f} | {pulled:7.2f} |")

    print("\n| switch, prober every 20 ms (new conn.) | failed requests | longest gap (s)       |")
    print("|----------------------------------------|-----------------|-----------------------|")
    for where, mode, failed, gaps in downtime(args.runs):
        label = f"{'this host' if where == 'local' else 'remote (ssh://)'}, {mode}"
        counts = " / ".join(
            str(v) for v in (min(failed), int(statistics.median(failed)), max(failed))
        )
        print(f"| {label:<38} | {counts:<15} | {spread(gaps, 3):<21} |")


if __name__ == "__main__":
    main()
