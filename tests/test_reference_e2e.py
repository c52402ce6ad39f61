"""The shipped config.example.toml deploys the Brain-shaped stand-in with its drain sequence.

Only what cannot be the reference's here is changed: names, ports, the image
repository and state directory (per test), and timings shortened so that
ticks happen every 1.2 s. The actions, health, version and migration
settings are the example's own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT, Collector, Service, swapped

pytestmark = pytest.mark.docker

EXAMPLE = ROOT / "config.example.toml"


def reference_config(service: Service) -> Path:
    text = EXAMPLE.read_text()
    swaps = [
        (r'"cecelia-node-brain-green"', f'"{service.green}"'),
        (r'"cecelia-node-brain"', f'"{service.name}"'),
        (r"(?m)^port = 5221", f"port = {service.port}"),
        (r"(?m)^green_port = 5222", f"green_port = {service.green_port}"),
        (r'"cecelia-brain:\{version\}"', f'"{service.repo}:{{version}}"'),
        (r'(?m)^# dir = "/var/lib/rolling-update"', f'dir = "{service.workdir / "state"}"'),
        # Timings: the stand-in ticks every 1.2 s, not every few minutes.
        (r"(?m)^interval = 5\.0", "interval = 0.1"),
        (r"(?m)^attempts = 12", "attempts = 300"),
        (r"(?m)^settle = 10", "settle = 0.1"),
        (r"(?m)^guard = 5", "guard = 0.4"),
        (r"(?m)^interval = 0\.5  ", "interval = 0.05"),
        (r"(?m)^soak = 5", "soak = 1"),
    ]
    text = swapped(text, swaps, "config.example.toml")
    path = service.workdir / "rolling-update.toml"
    path.write_text(text)
    return path


def brain(service: Service, collector: Collector) -> None:
    """Blue v1 ticking every 1.2 s, each tick dispatching a task that runs 1 s.

    Tick enablement lives in a shared file (the database's stand-in), in a bind
    mount blue has and its twins inherit.
    """
    shared = service.workdir / "shared"
    shared.mkdir()
    (shared / "tick").write_text("enabled")
    service.write_env_file(
        {
            "REPORT_URL": collector.url,
            "TICK_INTERVAL": "1.2",
            "TICK_DURATION": "0.2",
            "TASK_SECONDS": "1",
            "DB_NAME": service.name,  # an ordinary name: never blanked
            "DB_PASSWORD": "brain-db-pa55",
        }
    )
    args = ["--network", "host", "--restart", "unless-stopped", "-v", f"{shared}:/shared"]
    service.start_blue("1.0.0", {"TICK_STATE_FILE": "/shared/tick"}, args=args)


def at(events: list[dict[str, Any]], port: int, version: str) -> list[dict[str, Any]]:
    return [e for e in events if e["port"] == port and e["version"] == version]


def test_reference_config_drains_green_and_blue(service: Service, collector: Collector) -> None:
    """Green never dispatches beside blue; blue is drained, its tasks done, before its SIGTERM."""
    brain(service, collector)
    service.write_app("2.0.0")
    reference_config(service)
    run = service.deploy()
    assert run.code == 0, run.stderr
    assert service.serving() == "2.0.0"
    assert service.containers() == [service.name]

    green = service.green_port
    assert at(collector.of("tick_start"), green, "2.0.0"), "green's loop ran (and ticked)"
    assert at(collector.of("drain"), green, "2.0.0"), "green was drained"
    assert at(collector.of("dispatch"), green, "2.0.0") == [], "green dispatched beside blue"

    blue = service.port
    (sigterm,) = at(collector.of("sigterm"), blue, "1.0.0")
    (drain,) = at(collector.of("drain"), blue, "1.0.0")
    assert drain["time"] < sigterm["time"] and sigterm["draining"] is True
    dispatched = at(collector.of("dispatch"), blue, "1.0.0")
    done = at(collector.of("task_done"), blue, "1.0.0")
    assert all(d["time"] < drain["time"] for d in dispatched), "blue dispatched after its drain"
    assert len(done) == len(dispatched), "blue was stopped with a task in progress"
    assert all(d["time"] < sigterm["time"] for d in done)

    assert [e["action"] for e in run.event("action.done")] == ["drain green", "drain blue"]
    assert "***" not in run.stdout.replace("DB_PASSWORD=***", "")
    assert f'"{service.name}"' in run.stdout


def test_a_rollback_cancels_blues_drain(service: Service, collector: Collector) -> None:
    """A new version failing on production's port: rolled back, and blue's drain is cancelled."""
    brain(service, collector)
    service.write_app("2.0.0", knobs={"FAIL_ON_PORT": service.port})
    path = reference_config(service)
    path.write_text(re.sub(r"(?m)^timeout = 30 ", "timeout = 2 ", path.read_text()))
    run = service.deploy()
    assert run.code == 1, run.stderr
    assert service.serving() == "1.0.0"
    assert [e["action"] for e in run.event("action.done")][-1] == "cancel blue's drain"
    assert at(collector.of("drain_cancel"), service.port, "1.0.0")
