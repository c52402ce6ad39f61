"""Several hosts on real engines: this machine's and ru-host2's (a dockerd in a netns)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.hosts import HOST2_GREEN, TwoHosts, two_hosts
from tests.support import ROOT, Run, Service

__all__ = ["two_hosts"]


def test_two_hosts_over_ssh_deploy_canary_first(service: Service, two_hosts: TwoHosts) -> None:
    """A two-host deploy (local, then ssh://) builds once, copies the image, and serves the
    new version on both, with the host's own env."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config()
    service.write_app("2.0.0")
    run = service.deploy(timeout=300)
    assert run.code == 0, run.stderr + run.stdout[-3000:]
    assert service.serving() == "2.0.0"
    assert two_hosts.serving2() == "2.0.0"
    assert two_hosts.serving2(HOST2_GREEN) is None
    assert two_hosts.containers2() == [service.name]
    hosts = [e["host"] for e in run.event("rollout.host")]
    assert hosts == ["local", "h2"]
    assert run.event("image.copied")
    assert len(run.event("deploy.done")) == 2


def _signal_when(service: Service, host: str, step: str, signum: int) -> Run:
    """A deploy sent ``signum`` when ``host``'s deploy starts ``step``."""
    began = time.monotonic()
    out: list[str] = []
    with subprocess.Popen(
        service.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        sent = False
        for line in process.stdout:
            out.append(line)
            started = '"deploy.step.started"' in line and f'"step": "{step}"' in line
            if not sent and started and f'"host": "{host}"' in line:
                sent = True
                os.kill(process.pid, signum)
        code = process.wait(120)
        err = process.stderr.read()
    assert sent, "".join(out)[-3000:]
    return Run(code, "".join(out), err, time.monotonic() - began)


def test_canary_failure_stops_before_the_second_host(service: Service, two_hosts: TwoHosts) -> None:
    """A release that fails on the canary rolls the canary back; the second host is not
    touched (no image copied, blue untouched) and the exit code is 1."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config()
    service.write_app("2.0.0", knobs={"FAIL_HEALTH": "1"})
    run = service.deploy(timeout=300)
    assert run.code == 1, run.stderr
    assert service.serving() == "1.0.0"
    assert two_hosts.serving2() == "1.0.0"
    assert not run.event("image.copy")
    assert [(e["host"], e["result"]) for e in run.event("rollout.host")] == [
        ("local", "rolled-back")
    ]
    assert "h2               not-started" in run.stderr
    assert two_hosts.containers2() == [service.name]


def test_second_host_failure_with_rollback_all_takes_the_canary_back(
    service: Service, two_hosts: TwoHosts
) -> None:
    """With on_failure = rollback-all, a failure on the second host rolls it back and
    takes the already updated canary back to the old version: both serve 1.0.0."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config(extra='[rollout]\non_failure = "rollback-all"\n')
    # Only green on ru-host2 binds 5222: the release fails there alone.
    service.write_app("2.0.0", knobs={"FAIL_ON_PORT": str(HOST2_GREEN)})
    run = service.deploy(timeout=300)
    assert run.code == 1, run.stderr
    assert service.serving() == "1.0.0"
    assert two_hosts.serving2() == "1.0.0"
    assert "local            reverted" in run.stderr
    assert "h2               rolled-back" in run.stderr
    assert service.containers() == [service.name]
    assert two_hosts.containers2() == [service.name]


def test_second_host_failure_with_stop_keeps_the_canary_updated(
    service: Service, two_hosts: TwoHosts
) -> None:
    """With on_failure = stop (the default), the canary keeps the new version and the
    failed second host serves the old one."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config()
    service.write_app("2.0.0", knobs={"FAIL_ON_PORT": str(HOST2_GREEN)})
    run = service.deploy(timeout=300)
    assert run.code == 1, run.stderr
    assert service.serving() == "2.0.0"
    assert two_hosts.serving2() == "1.0.0"


def test_sigint_mid_rollout_rolls_back_the_host_in_flight(
    service: Service, two_hosts: TwoHosts
) -> None:
    """Ctrl-C while the second host warms green up rolls that host back and stops: exit
    130, the canary stays updated (on_failure = stop), every host serves."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config()
    service.write_app("2.0.0")
    run = _signal_when(service, "h2", "green-health", signal.SIGINT)
    assert run.code == 130, run.stderr
    assert service.serving() == "2.0.0"
    assert two_hosts.serving2() == "1.0.0"
    assert "h2               interrupted" in run.stderr
    assert two_hosts.containers2() == [service.name]
    assert not two_hosts.redirected2()


def test_sigkill_then_recover_on_both_hosts(service: Service, two_hosts: TwoHosts) -> None:
    """SIGKILL in the middle of the second host's switch (its port redirected by the
    helper), then `recover`: every host serves one production container, no leftovers,
    no redirect."""
    two_hosts.start_blues("1.0.0")
    two_hosts.config()
    service.write_app("2.0.0")
    run = _signal_when(service, "h2", "switch", signal.SIGKILL)
    assert run.code == -signal.SIGKILL
    assert two_hosts.redirected2()
    fixed = service.recover()
    assert fixed.code == 0, fixed.stderr
    assert "h2: consistent" in fixed.stderr
    assert "local: consistent" in fixed.stderr
    assert service.serving() == "2.0.0"
    assert two_hosts.serving2() in ("1.0.0", "2.0.0")
    assert service.containers() == [service.name]
    assert two_hosts.containers2() == [service.name]
    assert not two_hosts.redirected2()
    assert not service.marked()
