"""Blue's twin from inspect data: what is the operator's, what was the old image's."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from rolling_update._config.settings import parse_config
from rolling_update._deploy.preflight import _handoff_possible
from rolling_update._deploy.records import Preflight
from rolling_update._deploy.release import Release
from rolling_update._deploy.twin import Twin, diff
from rolling_update._engine.model import LABEL_CONFIG_ENV, LABEL_ROLE
from tests.support import RecordingFirewall, free_port

OLD_IMAGE: dict[str, Any] = {
    "Env": ["PATH=/usr/bin", "APP_VERSION=1.0.0"],
    "Cmd": ["python3", "/app/app.py", "serve"],
    "WorkingDir": "/app",
    "Labels": {"org.example.release": "1.0.0"},
    "Healthcheck": {"Test": ["CMD", "curl", "-f", "http://127.0.0.1:5221/health"]},
}


def blue(**overrides: Any) -> dict[str, Any]:
    config = {
        "Image": "brain:1.0.0",
        "Env": ["PATH=/usr/bin", "APP_VERSION=1.0.0", "TZ=Asia/Shanghai", "PORT=5221"],
        "Cmd": ["python3", "/app/app.py", "serve"],
        "WorkingDir": "/app",
        "User": "1000:1000",
        "Labels": {
            "org.example.release": "1.0.0",
            "com.docker.compose.service": "brain",
            LABEL_ROLE: "production",
            LABEL_CONFIG_ENV: "ENV_REGION,PORT",
        },
        "StopTimeout": 7,
    }
    config.update(overrides)
    return {
        "Id": "0123456789abcdef",
        "Config": config,
        "HostConfig": {
            "NetworkMode": "host",
            "RestartPolicy": {"Name": "unless-stopped", "MaximumRetryCount": 0},
            "ReadonlyRootfs": True,
            "Binds": ["/srv/creds:/run/creds:ro"],
            "PortBindings": {},
        },
        "NetworkSettings": {"Networks": {"host": {}}},
    }


def test_the_old_images_defaults_are_left_to_the_new_image() -> None:
    """Env, cmd, workdir and labels equal to the old image's are dropped; the rest is kept."""
    twin = Twin.of(blue(), OLD_IMAGE)
    assert twin.env == {"TZ": "Asia/Shanghai"}  # PORT: set by the tool's config last time
    assert "Cmd" not in twin.body and "WorkingDir" not in twin.body
    assert twin.body["User"] == "1000:1000" and twin.body["StopTimeout"] == 7
    assert twin.labels == {"com.docker.compose.service": "brain"}
    assert twin.body["HostConfig"]["ReadonlyRootfs"] is True
    assert (twin.network_mode, twin.restart) == ("host", "unless-stopped")


def test_an_overridden_command_is_the_operators() -> None:
    """A cmd that differs from the old image's (compose `command:`) carries over."""
    twin = Twin.of(blue(Cmd=["node", "server.js", "--verbose"]), OLD_IMAGE)
    assert twin.body["Cmd"] == ["node", "server.js", "--verbose"]


@pytest.mark.parametrize(
    ("published", "conflict"),
    [
        ({"5221/tcp": [{"HostIp": "", "HostPort": "5221"}]}, None),
        ({"9000/tcp": [{"HostIp": "", "HostPort": "9000"}]}, "host port 9000"),
    ],
)
def test_fixed_host_ports_other_than_productions_conflict(
    published: dict[str, Any], conflict: str | None
) -> None:
    """Production's published port moves to green's; any other fixed host port is a conflict."""
    data = blue()
    data["HostConfig"]["PortBindings"] = published
    twin = Twin.of(data, OLD_IMAGE)
    found = twin.conflicts(data, 5221)
    assert (conflict is None and found == []) or (conflict is not None and conflict in found[0])
    if conflict is None:
        assert twin.bindings_for(5221, 5222) == {"5222/tcp": [{"HostIp": "", "HostPort": "5222"}]}


@pytest.mark.parametrize(
    ("network", "published", "obstacle"),
    [
        ("host", {}, None),
        ("bridge", {"5221/tcp": [{"HostIp": "", "HostPort": "5221"}]}, None),
        ("bridge", {"3000/tcp": [{"HostIp": "0.0.0.0", "HostPort": "5221"}]}, None),
        ("bridge", {}, "does not publish port 5221"),
        ("net", {"5221/tcp": [{"HostIp": "127.0.0.1", "HostPort": "5221"}]}, None),
        ("net", {"5221/tcp": [{"HostIp": "10.0.0.5", "HostPort": "5221"}]}, "10.0.0.5 only"),
    ],
)
def test_only_a_port_published_on_every_host_address_can_be_handed_over(
    network: str, published: dict[str, Any], obstacle: str | None
) -> None:
    """On the host network, or publishing production's port on all addresses or loopback: the
    redirect moves its clients; unpublished, or bound to one other address: named as cause."""
    data = blue()
    data["HostConfig"].update(NetworkMode=network, PortBindings=published)
    found = Twin.of(data, OLD_IMAGE).handoff_obstacle(5221)
    assert (obstacle is None and found is None) or (obstacle or "?") in (found or "")


def test_the_drain_counts_the_port_inside_the_container() -> None:
    """Published 5221 -> 3000: blue's clients are on 3000 in its namespace; unpublished: itself."""
    data = blue()
    data["HostConfig"]["PortBindings"] = {"3000/tcp": [{"HostIp": "", "HostPort": "5221"}]}
    assert Twin.of(data, OLD_IMAGE).container_port(5221) == 3000
    assert Twin.of(blue(), OLD_IMAGE).container_port(5221) == 5221


def test_a_healthcheck_naming_productions_port_is_spotted() -> None:
    """The image's healthcheck curls 5221: on host network green's check would probe blue."""
    twin = Twin.of(blue(), OLD_IMAGE)
    assert twin.healthcheck_names_port(OLD_IMAGE, 5221)
    assert not twin.healthcheck_names_port(OLD_IMAGE, 6000)


def test_the_diff_names_env_keys_never_values() -> None:
    """A changed secret shows as ~KEY; its values appear nowhere in the diff."""
    before = blue(Env=["DB_PASSWORD=old-secret", "TZ=UTC"])
    after = {"Image": "brain:2.0.0", "Env": ["DB_PASSWORD=new-secret", "TZ=UTC", "NEW=1"]}
    after["HostConfig"] = before["HostConfig"]
    lines = diff(before, after)
    assert "Image: brain:1.0.0 -> brain:2.0.0" in lines
    assert "Env: ~DB_PASSWORD" in lines and "Env: +NEW" in lines
    assert "secret" not in " ".join(lines)


def test_green_probes_its_own_port_where_blues_healthcheck_names_production() -> None:
    """Compose's curl of localhost:5221 becomes :5222 for green; other uses turn it off."""
    check = {"Test": ["CMD", "curl", "-f", "http://localhost:5221/api/brain/tick/status"]}
    twin = Twin.of(blue(Healthcheck=check), OLD_IMAGE)
    found, done = twin.green_healthcheck(5221, 5222)
    assert found is not None and found["Test"][-1] == "http://localhost:5222/api/brain/tick/status"
    assert "5222" in done
    odd = Twin.of(blue(Healthcheck={"Test": ["CMD", "check", "--port", "5221"]}), OLD_IMAGE)
    assert odd.green_healthcheck(5221, 5222)[0] == {"Test": ["NONE"]}
    assert Twin.of(blue(), OLD_IMAGE).green_healthcheck(5221, 5222) == (None, "")


def twin_context(tmp_path: Any, twin: Twin, merged: dict[str, str], **tables: Any) -> Any:
    """A deploy's context over ``twin``; ``merged``: the env file's values, [env] on top."""
    import aiohttp

    from rolling_update import DeployContext
    from rolling_update._config.settings import parse_config
    from rolling_update.testing import FakeEngine

    cfg = parse_config(
        {
            "service": {"name": "app", "green_name": "app-green", "port": 5221, "green_port": 5222},
            "image": {"name": "app:{version}", "version_file": "p.json"},
            **tables,
        },
        base_dir=tmp_path,
        environ={},
        source="t.toml",
    )
    # Specs are pure: no request is ever made through this session.
    http = aiohttp.ClientSession.__new__(aiohttp.ClientSession)
    return DeployContext(
        config=cfg,
        engine=FakeEngine(),
        http=http,
        deploy_id="d",
        release=Release(version="2", image="app:2", env=merged),
        found=Preflight(blue=None, blue_health=None, twin=twin),
    )


def test_green_never_restarts_and_production_keeps_blues_policy(tmp_path: Any) -> None:
    """Green runs with restart "no" (no comeback after a daemon restart); production: blue's."""
    ctx = twin_context(tmp_path, Twin.of(blue(), OLD_IMAGE), {})
    green = ctx.spec("green", "app-green", 5222).to_api()
    production = ctx.spec("production", "app", 5221).to_api()
    assert green["HostConfig"]["RestartPolicy"]["Name"] == "no"
    assert production["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"


def test_green_with_its_own_healthcheck_is_still_published_on_its_port(tmp_path: Any) -> None:
    """Regression: rewriting green's healthcheck must not drop its moved port binding."""
    published = blue(Healthcheck={"Test": ["CMD", "curl", "-f", "http://localhost:5221/h"]})
    published["HostConfig"]["PortBindings"] = {
        "5221/tcp": [{"HostIp": "127.0.0.1", "HostPort": "5221"}]
    }
    ctx = twin_context(tmp_path, Twin.of(published, OLD_IMAGE), {})
    green = ctx.spec("green", "app-green", 5222).to_api()
    assert green["HostConfig"]["PortBindings"] == {
        "5222/tcp": [{"HostIp": "127.0.0.1", "HostPort": "5222"}]
    }
    assert green["Healthcheck"]["Test"][-1] == "http://localhost:5222/h"


def test_compose_environment_wins_over_the_env_file_as_in_compose(tmp_path: Any) -> None:
    """A key compose's environment: set keeps blue's value; [env] and the port env still win."""
    from rolling_update._deploy.compose import environment_keys

    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        "services:\n  brain:\n    env_file: [.env.docker]\n"
        "    environment:\n      - TZ=Asia/Shanghai\n      - ENV_REGION=${ENV_REGION:-us}\n"
        "      - PORT=5221\n"
    )
    labels = {
        "com.docker.compose.project": "p",
        "com.docker.compose.service": "brain",
        "com.docker.compose.project.working_dir": str(tmp_path),
        "com.docker.compose.project.config_files": str(compose),
    }
    keys, why = environment_keys(labels)
    assert keys == {"TZ", "ENV_REGION", "PORT"} and why is None
    made = blue(Labels={**labels, LABEL_CONFIG_ENV: "TZ,DB_HOST"})
    ctx = twin_context(
        tmp_path,
        Twin.of(made, OLD_IMAGE, compose_env=keys),
        {"TZ": "UTC", "DB_HOST": "db", "ENV_REGION": "hk"},
        env={"ENV_REGION": "hk"},
    )
    spec = ctx.spec("production", "app", 5221)
    assert spec.env["TZ"] == "Asia/Shanghai"  # compose's environment: over env_file
    assert spec.env["DB_HOST"] == "db" and spec.env["ENV_REGION"] == "hk"
    assert spec.env["PORT"] == "5221"
    # Not named as the tool's own: the next deploy keeps compose's value again.
    assert "TZ" not in spec.labels[LABEL_CONFIG_ENV].split(",")
    unreadable = {**labels, "com.docker.compose.project.config_files": str(tmp_path / "gone.yml")}
    assert environment_keys(unreadable)[0] == frozenset()
    assert "cannot read" in str(environment_keys(unreadable)[1])


TCP_HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt\n"


def listener(port: int) -> str:
    return f"   0: 00000000:{port:04X} 00000000:0000 0A 00000000:00000000 00:00000000 0 0 0 1\n"


@pytest.mark.anyio
async def test_a_bridge_service_falls_back_where_no_proxy_listens(tmp_path: Any) -> None:
    """Blue publishes production's port: handed over where the host's tables show the engine's
    listener on it; where none listens (``userland-proxy: false``), the restart switch, one
    log line naming the cause."""
    port = free_port()
    data = blue()
    data["HostConfig"].update(
        NetworkMode="bridge", PortBindings={f"{port}/tcp": [{"HostIp": "", "HostPort": str(port)}]}
    )
    service = {"name": "app", "green_name": "app-green", "port": port, "green_port": port + 1}
    cfg = parse_config(
        {"service": service, "image": {"name": "app:{version}", "version_file": "p.json"}},
        base_dir=tmp_path,
        environ={},
        source="t.toml",
    )
    twin = Twin.of(data, OLD_IMAGE)
    proxied = RecordingFirewall(TCP_HEADER + listener(port))
    assert await _handoff_possible(cfg, twin, proxied, serving=True)
    with capture_logs() as logs:
        assert not await _handoff_possible(cfg, twin, RecordingFirewall(), serving=True)
        # Blue not running: nothing to tell from its port, and nothing served to keep.
        assert await _handoff_possible(cfg, twin, RecordingFirewall(), serving=False)
    (line,) = [entry for entry in logs if entry["event"] == "switch.mode"]
    assert "docker-proxy" in line["why"] and str(port) in line["why"]
