"""The deploy lock and journal: exclusive, self-describing, durable, taken over from the dead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rolling_update._config.settings import parse_config
from rolling_update._errors import ConfigError, DeployLocked, StateWriteFailed
from rolling_update._state.journal import Journal
from rolling_update._state.lock import service_lock


def test_second_holder_is_refused_with_the_first_ones_details(tmp_path: Path) -> None:
    """While one process holds the lock, another gets DeployLocked naming pid, deploy and time."""
    # A barrier: the holder says when it holds the lock, and holds it until its stdin
    # closes (here it is killed first: a dead holder's lock must be free at once).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1])\n"
            "from pathlib import Path\n"
            "from rolling_update._state.lock import service_lock\n"
            "with service_lock(Path(sys.argv[2]), 'svc', purpose='deploy', deploy_id='abc123'):\n"
            "    print('held', flush=True); sys.stdin.read()",
            str(Path(__file__).resolve().parent.parent),
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with (
            pytest.raises(
                DeployLocked, match=rf"svc is locked by deploy abc123 \(pid {holder.pid} on "
            ),
            service_lock(tmp_path, "svc", purpose="deploy", deploy_id="x"),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.stdout.close()
    # The kernel dropped the dead holder's lock: it can be taken now.
    with service_lock(tmp_path, "svc", purpose="deploy", deploy_id="y"):
        pass


def test_clean_release_leaves_an_empty_lock_file(tmp_path: Path) -> None:
    """A released lock holds no holder details, so leftovers always mean a holder died."""
    with service_lock(tmp_path, "svc", purpose="deploy", deploy_id="d"):
        held = json.loads((tmp_path / "lock").read_text())
        assert held["pid"] == os.getpid() and held["deploy_id"] == "d"
    assert (tmp_path / "lock").read_text() == ""


def test_unusable_state_dir_is_a_config_error(tmp_path: Path) -> None:
    """A state dir that cannot be created is reported naming state.dir."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with (
        pytest.raises(ConfigError, match=r"state\.dir"),
        service_lock(blocker / "sub", "svc", purpose="deploy", deploy_id="d"),
    ):
        pass


def test_journal_round_trips_and_is_replaced_atomically(tmp_path: Path) -> None:
    """Updates rewrite the whole journal via a rename; loading gives back the last state."""
    journal = Journal.begin(tmp_path, deploy_id="d1", service="svc", image="i:2", version="2")
    journal.update(step="switch", blue_id="abc", blue_was_running=True)
    loaded = Journal.load(Journal.path_for(tmp_path))
    assert loaded is not None
    assert (loaded.record.step, loaded.record.blue_id, loaded.record.committed) == (
        "switch",
        "abc",
        False,
    )
    assert "last step switch" in loaded.describe()
    assert not list(tmp_path.glob("*.tmp"))
    journal.remove()
    assert Journal.load(Journal.path_for(tmp_path)) is None


def test_corrupt_journal_is_reported_not_guessed(tmp_path: Path) -> None:
    """A journal that is not ours is an error naming it, never silently ignored."""
    path = Journal.path_for(tmp_path)
    path.write_text("{half")
    with pytest.raises(ConfigError, match="journal is unreadable"):
        Journal.load(path)


def test_journal_refuses_a_misspelt_fact(tmp_path: Path) -> None:
    """Regression: Journal.update with an unknown key raises instead of dropping the fact."""
    journal = Journal.begin(tmp_path, deploy_id="d1", service="svc", image="i:2", version="2")
    with pytest.raises(TypeError, match="blue_idd"):
        journal.update(blue_idd="abc")
    loaded = Journal.load(Journal.path_for(tmp_path))
    assert loaded is not None and loaded.record.blue_id is None


def test_a_fact_whose_write_failed_is_not_written_by_the_next_update(tmp_path: Path) -> None:
    """Regression: a commit whose journal write failed is not put on disk by a later write
    (an undo's record during the rollback would have said the rolled-back deploy verified)."""
    journal = Journal.begin(tmp_path, deploy_id="d1", service="svc", image="i:2", version="2")
    path = Journal.path_for(tmp_path)
    # The atomic write's temporary file cannot be opened: a real failed write, no disk filled.
    blocker = path.with_name(path.name + ".tmp")
    blocker.mkdir()
    with pytest.raises(StateWriteFailed):
        journal.update(committed=True)
    blocker.rmdir()
    journal.update(redirect=False)
    loaded = Journal.load(path)
    assert loaded is not None and loaded.record.committed is False
    assert journal.record.committed is False


def test_state_lives_per_host_and_service_not_beside_the_config(tmp_path: Path) -> None:
    """Two checkouts' configs without [state] share one state dir: the host's, per service."""
    data = {
        "service": {"name": "svc", "green_name": "svc-g", "port": 1, "green_port": 2},
        "image": {"name": "i:{version}", "version_file": "p.json"},
    }
    one = parse_config(data, base_dir=tmp_path / "a", environ={}, source="a.toml")
    two = parse_config(data, base_dir=tmp_path / "b", environ={}, source="b.toml")
    host_wide = (
        Path("/var/lib/rolling-update")
        if os.geteuid() == 0
        else Path.home() / ".local" / "state" / "rolling-update"
    )
    assert one.state_dir == two.state_dir == host_wide / "svc"
    explicit = parse_config(
        {**data, "state": {"dir": "st"}}, base_dir=tmp_path, environ={}, source="c.toml"
    )
    assert explicit.state_dir == tmp_path / "st" / "svc"
