"""`demo` runs the main job on the real engine and leaves the engine as it found it."""

from __future__ import annotations

import re
import signal
import subprocess

import pytest

from tests.support import BASE_IMAGE, Cli, docker

pytestmark = pytest.mark.docker


def engine_state() -> dict[str, list[str]]:
    """Every container, image, volume and nftables table of a demo on this host (the
    demo names them all rolling-update-demo-<id>; other tests' objects are not its)."""
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False)
    listed = {
        "containers": docker("ps", "-a", "--format", "{{.Names}}"),
        "images": docker("images", "--format", "{{.Repository}}:{{.Tag}}"),
        "volumes": docker("volume", "ls", "-q"),
        "tables": tables.stdout,
    }
    return {
        kind: sorted(ln for ln in text.splitlines() if re.search("rolling.update.demo", ln))
        for kind, text in listed.items()
    }


def demo() -> Cli:
    """``python -m rolling_update demo`` on the test base image, its output in one stream."""
    return Cli(["demo", "--base", BASE_IMAGE], merge_stderr=True, timeout=120)


def test_demo_deploys_rolls_back_with_no_failed_request_and_leaves_nothing() -> None:
    """2.0.0 deploys, the broken 3.0.0 rolls back, 0 failed requests, the engine as before."""
    before = engine_state()
    assert before == {"containers": [], "images": [], "volumes": [], "tables": []}
    with demo() as cli:
        run = cli.finish()
    out = run.stdout
    assert run.code == 0, out
    assert "2.0.0 deployed, broken 3.0.0 rolled back" in out
    assert "failed 0; nothing left behind" in out
    assert "timeline," in out and "Rolled back" in out
    assert engine_state() == before


def test_an_interrupted_demo_removes_what_it_made() -> None:
    """SIGINT during the first deploy: exit 130 and nothing of the demo is left on the engine."""
    before = engine_state()
    with demo() as cli:
        cli.until("green's start", lambda line: "Starting green container" in line)
        cli.signal(signal.SIGINT)
        run = cli.finish()
    out = run.stdout
    assert run.code == 130, out
    assert "everything it made is removed" in out
    assert engine_state() == before
