"""Memory and disk running out, made for real on the main engine.

Memory: blue runs under ``--memory``, which green and the new production container
inherit as its twin; the new release outgrows it (the stand-in's ``MEMORY_MB`` with
``ALLOC_MB_AFTER``, or ``GET /__standin/alloc``) and the kernel OOM-kills it. Disk: the
state directory is a small ext4 filesystem of its own (a loop mount, no blocks reserved
for root), filled with a file at a phase of the deploy. Each case asserts the exit code,
the one line, and the host left: what serves production's port, which containers exist,
the redirect, the journal (and no ``.tmp`` beside it) and the engine's mark; a client
probing production's port all along counts what failed.
"""

from __future__ import annotations

import errno
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from rolling_update._deploy.outcome import Outcome
from rolling_update._observe import history
from tests.support import (
    FAULT_TICK,
    MIGRATION_OOM_KILLED,
    Prober,
    Run,
    Service,
    assert_rolled_back_untouched,
    assert_serves_only,
    deploy_with_fault,
    get_json,
    growing_migration,
    one_line,
    until,
)

pytestmark = pytest.mark.docker

LIMIT_MB = 96
ENOSPC = "No space left on device"


class SmallDisk:
    """A 16 MB ext4 filesystem mounted at ``path``, and a file that fills it."""

    def __init__(self, root: Path) -> None:
        self.image = root / "disk.img"
        self.path = Path("/mnt") / f"ru-disk-{uuid.uuid4().hex[:8]}"
        subprocess.run(["truncate", "-s", "16M", str(self.image)], check=True)
        # No blocks reserved for root: the tool runs as root and must meet a full disk.
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-m", "0", "-b", "1024", str(self.image)], check=True
        )
        self.path.mkdir()
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.path)], check=True)

    def fill(self, *, spare_blocks: int = 0) -> None:
        """Fill the filesystem to its last block, then free ``spare_blocks`` of 1 KiB."""
        spares = []
        for n in range(spare_blocks):
            spare = self.path / f"spare-{n}"
            spare.write_bytes(b"s" * 1024)
            spares.append(spare)
        with (self.path / "filler").open("ab", buffering=0) as f:
            # Twice: a journal replaced (its new copy written, then renamed over the old)
            # while the first pass ran frees the old copy's blocks, room for every later
            # write of the same size.
            for _ in range(2):
                for size in (1 << 20, 1 << 12, 1 << 10, 1):
                    try:
                        while True:
                            f.write(b"\0" * size)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                time.sleep(0.05)
        for spare in spares:
            spare.unlink()

    def free(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)
        self.path.rmdir()
        self.image.unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    small = SmallDisk(tmp_path)
    try:
        yield small
    finally:
        small.close()


def on_disk(service: Service, disk: SmallDisk, *, soak: float = 1) -> None:
    """Blue v1 serving, v2 to deploy (soaked ``soak`` s), the state directory on ``disk``."""
    service.start_blue("1.0.0")
    service.write_app("2.0.0")
    service.config(state=f'dir = "{disk.path}"\n', verify=f"timeout = 10\nsoak = {soak:g}\n")


def report(fault: str, phase: str, run: Run, prober: Prober) -> None:
    """The outcome-table row of this case, for the README (pytest -s shows it)."""
    print(
        f"\nOUTCOME fault={fault} phase={phase} exit={run.code} seconds={run.seconds:.1f}"
        f" failed={prober.failures} of={len(prober.samples)} dark={prober.longest_gap():.2f}"
        f" line={run.stderr.strip()[-200:]!r}"
    )


def test_green_oom_killed_while_warming_up(service: Service) -> None:
    """Green, under blue's inherited memory limit, outgrows it during its boot: the kernel
    kills it, the deploy rolls back with exit 1 naming the OOM kill, and blue serves
    throughout."""
    service.start_blue("1.0.0", args=("--network", "host", "--memory", f"{LIMIT_MB}m"))
    service.write_app(
        "2.0.0", knobs={"MEMORY_MB": 4 * LIMIT_MB, "ALLOC_MB_AFTER": 0.5, "BOOT_DELAY": 30}
    )
    service.config()
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    assert run.code == 1, run.tail()
    line = one_line(run)
    assert f"{service.green} was OOM-killed" in line and "rolled back" in line, line
    assert service.inspect(service.name)["HostConfig"]["Memory"] == LIMIT_MB << 20
    assert_serves_only(service, "1.0.0")
    assert prober.failures == 0
    report("OOM kill", "green's warm-up", run, prober)


def test_production_oom_killed_during_the_soak(service: Service) -> None:
    """The new production container takes more memory than blue's inherited limit during the
    soak: the kernel kills it, the soak rolls back with exit 1 naming the OOM kill (never
    success), and blue serves again."""
    service.start_blue("1.0.0", args=("--network", "host", "--memory", f"{LIMIT_MB}m"))
    service.write_app("2.0.0")
    service.config(verify="timeout = 10\nsoak = 30\n")
    with Prober(service.version_url()) as prober, service.cli("deploy", timeout=180) as cli:
        cli.until_event("deploy.step.started", step="soak")
        get_json(service.url(path=f"/__standin/alloc?mb={4 * LIMIT_MB}"))
        run = cli.finish()
    assert run.code == 1, run.tail()
    line = one_line(run)
    assert f"{service.name} was OOM-killed" in line and "rolled back" in line, line
    assert_serves_only(service, "1.0.0")
    report("OOM kill", "soak (new production)", run, prober)


@pytest.mark.parametrize("phase", ["tick-boundary", "handoff", "switch", "verify"])
def test_green_oom_killed_past_its_warm_up(service: Service, phase: str) -> None:
    """Green outgrows blue's inherited memory limit at blue's tick wait, or from the
    redirect on while it serves production's port (the redirect, the switch, the verify):
    the kernel kills it, the deploy rolls back with exit 1 naming the OOM kill, and blue
    alone serves."""
    service.start_blue("1.0.0", args=("--network", "host", "--memory", f"{LIMIT_MB}m"))
    service.write_app("2.0.0", knobs={"BOOT_DELAY": 2})
    service.config(tick=FAULT_TICK, verify="timeout = 20\nsoak = 4\n")
    alloc = service.url(port=service.green_port, path=f"/__standin/alloc?mb={4 * LIMIT_MB}")
    out = deploy_with_fault(service, phase, lambda: get_json(alloc, timeout=5))
    out.report("OOM kill", phase)
    run = out.run
    assert run.code == 1, run.tail()
    line = one_line(run)
    assert f"{service.green} was OOM-killed" in line and "rolled back" in line, line
    assert_serves_only(service, "1.0.0")


def test_a_migration_oom_killed_at_its_inherited_limit(service: Service) -> None:
    """A migration outgrows blue's memory limit, which its one-off container inherits: the
    kernel kills it, the deploy rolls back with exit 1 naming the kill, and blue, never
    touched, serves throughout."""
    service.start_blue("1.0.0", args=("--network", "host", "--memory", f"{LIMIT_MB}m"))
    service.write_app("2.0.0")
    service.config(migrate=growing_migration(4 * LIMIT_MB))
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    report("OOM kill", "a migration running", run, prober)
    assert_rolled_back_untouched(service, run, prober, MIGRATION_OOM_KILLED)


@pytest.mark.parametrize("restart", ["unless-stopped", "no"])
def test_production_oom_killed_in_the_cleanup(service: Service, restart: str) -> None:
    """The new production container outgrows blue's inherited limit as the cleanup begins,
    past the commit: the kernel kills it. Brought back by its restart policy, the deploy
    ends with exit 0 and the new version alone serves. With no policy, nothing serves: the
    deploy keeps the previous version's container and exits 3 saying so, never 0 (its audit
    entry: ``production-down``), and `recover` starts the new version again."""
    args = ("--network", "host", "--memory", f"{LIMIT_MB}m", "--restart", restart)
    service.start_blue("1.0.0", args=args)
    # Green serves 2 s past its SIGTERM: the kill lands while the cleanup stops green,
    # before it looks at production and removes blue.
    service.write_app("2.0.0", knobs={"SHUTDOWN_DELAY": 2})
    service.config(verify="timeout = 10\nsoak = 1\n")
    since = time.time()
    alloc = service.url(path=f"/__standin/alloc?mb={4 * LIMIT_MB}")
    recovered: list[Run] = []

    def recover() -> None:
        if restart == "no":
            assert service.serving() is None
            assert service.old_name in service.containers()
            recovered.append(service.recover())

    out = deploy_with_fault(service, "cleanup", lambda: get_json(alloc, timeout=5), undo=recover)
    out.report("OOM kill", f"cleanup, restart {restart}")
    deaths = service.events_since(
        since, "die", "{{.Actor.Attributes.exitCode}}", f"name={service.name}"
    )
    assert "137" in deaths, deaths
    if restart == "no":
        assert out.run.code == 3, out.run.tail()
        line = one_line(out.run)
        assert f"error: {service.name}, the new version, was OOM-killed" in line, line
        assert "during the cleanup and nothing restarted it: production's port is dark" in line
        assert f"the previous version is kept as {service.old_name}" in line, line
        assert recovered[0].code == 0, recovered[0].tail()
        results = [e.result for e in history.read(service.journal.parent)]
        assert results[-2:] == [Outcome.PRODUCTION_DOWN, Outcome.RECOVERED], results
    else:
        assert out.run.code == 0, out.run.tail()
    assert_serves_only(service, "2.0.0")


@pytest.mark.parametrize(("spare_blocks", "file"), [(0, "lock"), (1, "journal.json")])
def test_disk_full_before_the_deploy(
    service: Service, disk: SmallDisk, spare_blocks: int, file: str
) -> None:
    """The state directory's disk is full (or has room for the lock alone) as the deploy
    begins: exit 2, one line naming the file and the full disk, nothing changed, no engine
    mark, no journal or half-written copy of it."""
    on_disk(service, disk)
    service.journal.parent.mkdir(parents=True)
    (service.journal.parent / "lock").touch()
    disk.fill(spare_blocks=spare_blocks)
    with Prober(service.version_url()) as prober:
        run = service.deploy()
    assert run.code == 2, run.tail()
    line = one_line(run)
    assert f"cannot write the {file.split('.')[0]} " in line, line
    assert f"{file}: {ENOSPC} (nothing was changed)" in line, line
    assert_serves_only(service, "1.0.0")
    assert prober.failures == 0
    report("disk full", f"start ({file})", run, prober)


@pytest.mark.parametrize(
    "phase", ["migrate", "green-health", "tick-boundary", "handoff", "switch", "verify"]
)
def test_disk_full_mid_deploy(service: Service, disk: SmallDisk, phase: str) -> None:
    """The state directory's disk fills during a phase: the next journal write fails, the
    deploy rolls back without stopping on its own records (exit 1, one line naming the
    journal and the full disk), blue serves, nothing is left; the audit log's failure is
    said in the log, and the next deploy, once there is room, succeeds."""
    on_disk(service, disk)
    with Prober(service.version_url()) as prober, service.cli("deploy", timeout=180) as cli:
        cli.until_event("deploy.step.started", step=phase)
        disk.fill()
        run = cli.finish()
    assert run.code == 1, run.tail()
    line = one_line(run)
    assert f"cannot write the journal {service.journal}: {ENOSPC}" in line, line
    assert "rolled back" in line, line
    assert_serves_only(service, "1.0.0")
    assert prober.failures == 0
    # The journal's removal frees a block or two: the audit line fits there, or is said.
    said = [e["error"] for e in run.event("history.not_written")]
    kept = [e.result for e in history.read(service.journal.parent)]
    assert kept == [Outcome.ROLLED_BACK] or said == [
        f"cannot write the audit log {history.path_for(service.journal.parent)}: {ENOSPC}"
    ], (kept, said)
    report("disk full", phase, run, prober)
    disk.free()
    again = service.deploy()
    assert again.code == 0, again.tail()
    assert_serves_only(service, "2.0.0")


def test_disk_full_at_the_commit(service: Service, disk: SmallDisk) -> None:
    """The state directory's disk fills during the soak, so the write that records the
    commit fails: the deploy is not committed (as the journal on disk still says), so it
    rolls back like a soak that failed (exit 1, one line naming the journal and the full
    disk), blue serves, nothing is left; the next deploy, once there is room, deploys."""
    on_disk(service, disk, soak=3)
    with Prober(service.version_url()) as prober, service.cli("deploy", timeout=180) as cli:
        cli.until_event("deploy.step.started", step="soak")
        # The soak's own record is on disk: the next write is the commit's.
        until(
            lambda: (left := service.journal_left()) is not None and left.step == "soak",
            "the journal records the soak",
        )
        disk.fill()
        run = cli.finish()
    assert run.code == 1, run.tail()
    soaked = [e for e in run.event("deploy.step.done") if e.get("step") == "soak"]
    assert soaked, run.tail()
    line = one_line(run)
    assert f"cannot write the journal {service.journal}: {ENOSPC}" in line, line
    assert "rolled back" in line, line
    assert_serves_only(service, "1.0.0")
    report("disk full", "the commit (soak passed)", run, prober)
    disk.free()
    again = service.deploy()
    assert again.code == 0, again.tail()
    assert_serves_only(service, "2.0.0")


def test_disk_full_in_the_cleanup(service: Service, disk: SmallDisk) -> None:
    """The state directory's disk fills as the cleanup begins, past the commit: the new
    version serves whatever the journal's next write meets, and the exit code says whether
    the cleanup finished (0) or `recover` must finish it once there is room (4)."""
    on_disk(service, disk)
    with Prober(service.version_url()) as prober, service.cli("deploy", timeout=180) as cli:
        cli.until_event("deploy.step.started", step="cleanup")
        disk.fill()
        run = cli.finish()
    report("disk full", "cleanup (past the commit)", run, prober)
    assert run.code in (0, 4), run.tail()
    assert prober.failures == 0
    assert service.serving() == "2.0.0"
    disk.free()
    if run.code == 4:
        assert "run `rolling-update recover`" in one_line(run), run.stderr
        fixed = service.recover()
        assert fixed.code == 0, fixed.tail()
    assert_serves_only(service, "2.0.0")


def test_audit_log_unwritable_after_a_deploy(tmp_path: Path, disk: SmallDisk) -> None:
    """An audit-log line that meets a full disk is not raised but said (naming the file),
    and the file keeps every earlier line whole, with no part of the new one."""
    service_dir = disk.path / "svc"
    service_dir.mkdir()
    entry = history.Attempt(id="a1", kind="deploy").entry(
        "svc", Outcome.DEPLOYED, reason=None, seconds=1.0
    )
    assert history.append(service_dir, entry)
    before = history.path_for(service_dir).read_bytes()
    big = entry.model_copy(update={"reason": "x" * 64_000})
    disk.fill(spare_blocks=2)
    assert not history.append(service_dir, big)
    assert history.path_for(service_dir).read_bytes() == before
