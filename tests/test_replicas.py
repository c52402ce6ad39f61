"""Several replicas without an engine: names and ports derived or given, validation, each
replica's own config, and their composition with hosts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rolling_update import ConfigError
from rolling_update._config.settings import parse_config
from rolling_update._hosts.hosts import bypass_port, for_unit, is_rollout, pick, units_of
from tests.support import replicated_config, run_cli

SERVICE = {"name": "app", "green_name": "app-green", "port": 5221, "green_port": 5222}
ACTIONS = [
    {"name": "drain green", "moment": "green-answers", "target": "green", "path": "/d"},
    {"name": "cancel", "moment": "rollback", "target": "blue", "path": "/c", "replicas": "tick"},
    {
        "name": "drain production",
        "moment": "production-answers",
        "target": "production",
        "path": "/d",
        "replicas": "others",
    },
]


def config(service: dict[str, Any] | None = None, **extra: Any) -> Any:
    data: dict[str, Any] = {
        "service": {**SERVICE, **(service or {})},
        "image": {"name": "app:{version}", "version_file": "package.json"},
        "build": {"context": "."},
        "migrate": {"commands": [["migrate"]]},
        "state": {"dir": "state"},
        "actions": ACTIONS,
        **extra,
    }
    return parse_config(data, base_dir=Path("/srv"), environ={}, source="t.toml")


def test_replicas_are_derived_from_the_service_name_and_ports() -> None:
    """replicas = 3: NAME-i on port + (i-1) * step, its green NAME-i-green on green_port + ..."""
    cfg = config({"replicas": 3})
    found = [
        (r.name, r.port, r.green_port, r.container, r.green_container)
        for r in cfg.service.replica_list()
    ]
    assert found == [
        ("app-1", 5221, 5222, "app-1", "app-1-green"),
        ("app-2", 5231, 5232, "app-2", "app-2-green"),
        ("app-3", 5241, 5242, "app-3", "app-3-green"),
    ]
    stepped = config({"replicas": 2, "replica_port_step": 100}).service.replica_list()
    assert [(r.port, r.green_port) for r in stepped] == [(5221, 5222), (5321, 5322)]


def test_each_replica_is_a_unit_with_its_own_names_state_and_calls() -> None:
    """A replica deploys under its own names and ports, state dir and metrics; only the first
    builds and migrates; only the tick replica cancels blue's drain, the others drain theirs."""
    cfg = config({"replicas": 3, "tick_replica": 2}, metrics={"textfile": "m/ru.prom"})
    units = units_of(cfg)
    assert is_rollout(cfg) and [u.name for u in units] == ["app-1", "app-2", "app-3"]
    assert [u.owns_tick for u in units] == [False, True, False]
    first, second, _ = (for_unit(cfg, u, first=i == 0) for i, u in enumerate(units))
    svc = second.service
    assert (svc.name, svc.green_name, svc.port, svc.green_port) == (
        "app-2",
        "app-2-green",
        5231,
        5232,
    )
    assert not svc.replicated
    assert second.state_dir == Path("/srv/state/replicas/app-2/app-2")
    assert second.metrics.textfile == Path("/srv/m/ru-app-2.prom")
    assert second.metrics.labels == {"replica": "app-2"}
    assert first.build.enabled and first.migrate.commands
    assert not second.build.enabled and not second.migrate.commands
    assert [a.name for a in first.actions] == ["drain green", "drain production"]
    assert [a.name for a in second.actions] == ["drain green", "cancel"]
    assert [a.name for a in first.actions_at("production-answers")] == ["drain production"]
    assert [bypass_port(cfg, u) for u in units] == [15221, 15231, 15241]


def test_one_container_owns_the_tick_and_makes_no_call_meant_for_the_others() -> None:
    """replicas = 1: no rollout, the config as it is, and the other replicas' calls unused."""
    cfg = config()
    assert not is_rollout(cfg)
    [unit] = units_of(cfg)
    assert for_unit(cfg, unit, first=True) is cfg
    assert cfg.actions_at("production-answers") == []
    assert [a.name for a in cfg.actions_at("rollback")] == ["cancel"]


def test_whose_deploy_makes_a_call_is_one_rule() -> None:
    """replicas = all: every deploy makes the call; tick: the tick owner's; others: the rest's."""
    made = {
        a.name: (a.made_by(owns_tick=True), a.made_by(owns_tick=False)) for a in config().actions
    }
    assert made == {
        "drain green": (True, True),
        "cancel": (True, False),
        "drain production": (False, True),
    }


def test_named_replicas_default_their_containers_to_their_names() -> None:
    """[[service.replica]] entries: the container is the name, green the name + -green."""
    cfg = config(
        {
            "replica": [
                {"name": "a", "port": 7000, "green_port": 7001},
                {"name": "b", "port": 7100, "green_port": 7101, "green_container": "b-new"},
            ]
        }
    )
    assert [(r.container, r.green_container) for r in cfg.service.replica_list()] == [
        ("a", "a-green"),
        ("b", "b-new"),
    ]
    second = for_unit(cfg, units_of(cfg)[1], first=False)
    assert (second.service.name, second.service.port) == ("b", 7100)


def test_replicas_on_each_host_are_units_host_after_host() -> None:
    """With [[hosts]], each host's replicas are units named HOST/REPLICA, with state under
    the host's; per-host migrations run on each host's first replica only; a unit picked
    keeps its place in the rollout."""
    hosts = [{"name": "us"}, {"name": "hk", "engine": "ssh://hk.example.com", "port": 6221}]
    cfg = config({"replicas": 2}, hosts=hosts, rollout={"migrate": "per-host"})
    units = units_of(cfg)
    assert [u.name for u in units] == ["us/app-1", "us/app-2", "hk/app-1", "hk/app-2"]
    configs = [for_unit(cfg, u, first=i == 0) for i, u in enumerate(units)]
    assert [c.service.port for c in configs] == [5221, 5231, 6221, 6231]
    assert configs[3].state_dir == Path("/srv/state/hosts/hk/replicas/app-2/app-2")
    assert configs[3].service.host == "hk.example.com"
    assert [bool(c.migrate.commands) for c in configs] == [True, False, True, False]
    assert [u.flags for u in pick(cfg, "hk", "app-2")] == ["--host hk --replica app-2"]
    assert [u.index for u in units] == [0, 1, 2, 3]
    assert [u.index for u in pick(cfg, None, "app-2")] == [1, 3]
    assert [u.name for u in pick(cfg, None, "app-1")] == ["us/app-1", "hk/app-1"]


def test_a_unit_is_named_flagged_and_labelled_from_the_same_parts() -> None:
    """A host alone, a replica on this machine and a replica on a host each read the same
    in the unit's name, label and the flags that pick it."""
    hosts = [{"name": "us"}, {"name": "hk", "engine": "ssh://hk.example.com"}]
    shapes = [
        units_of(config(hosts=hosts))[1],
        units_of(config({"replicas": 2}))[1],
        units_of(config({"replicas": 2}, hosts=hosts))[3],
    ]
    assert [(u.name, u.label, u.flags) for u in shapes] == [
        ("hk", "host hk", "--host hk"),
        ("app-2", "replica app-2", "--replica app-2"),
        ("hk/app-2", "host hk, replica app-2", "--host hk --replica app-2"),
    ]


def test_a_hosts_bypass_port_with_replicas_is_refused_naming_it() -> None:
    """hosts.NAME.bypass_port would be ignored with replicas (each has its own): refused."""
    hosts = [{"name": "hk", "engine": "ssh://hk.example.com", "bypass_port": 16000}]
    with pytest.raises(ConfigError, match=r"hosts\.hk\.bypass_port: with replicas"):
        config({"replicas": 2}, hosts=hosts)


REMOTE = [{"name": "hk", "engine": "ssh://hk.example.com"}]


@pytest.mark.parametrize(
    ("service", "message"),
    [
        (
            {"replicas": 2, "replica_port_step": 10_000},
            r"service\.replica_port_step: on host hk, app-1's bypass port 15221 \(its port "
            r"\+ 10000, for the remote handoff\) is also app-2's port",
        ),
        (
            {
                "replica": [
                    {"name": "a", "port": 7000, "green_port": 7001},
                    {"name": "b", "port": 7100, "green_port": 17000},
                ]
            },
            r"service\.replica\.a\.port: on host hk, a's bypass port 17000 .* is also "
            r"b's green_port",
        ),
        (
            {
                "replica": [
                    {"name": "a", "port": 40000, "green_port": 40001},
                    {"name": "b", "port": 60000, "green_port": 60001},
                ]
            },
            r"service\.replica\.b\.port: on host hk, b's bypass port 50000 \(its port - "
            r"10000, .*\) is also a's bypass port",
        ),
    ],
)
def test_a_replicas_bypass_port_taken_on_a_remote_host_is_refused_naming_the_key(
    service: dict[str, Any], message: str
) -> None:
    """On a remote host, a replica's bypass port that is another replica's port (or bypass
    port) is refused naming the key; on this machine, where no bypass is used, it is not."""
    with pytest.raises(ConfigError, match=message):
        config(service, hosts=REMOTE)
    config(service)
    config(service, hosts=[{"name": "here"}])


def test_a_bypass_port_clash_exits_2_before_anything_is_touched(tmp_path: Path) -> None:
    """deploy of such a config: exit 2 naming the key, no state written, no host reached."""
    hosts = '[[hosts]]\nname = "hk"\nengine = "ssh://hk.invalid"'
    path = replicated_config(tmp_path, "replica_port_step = 10000", hosts)
    done = run_cli("deploy", "--config", str(path))
    assert done.returncode == 2, done.stderr
    assert "service.replica_port_step: on host hk, app-1's bypass port 15221" in done.stderr
    assert list(tmp_path.iterdir()) == [path]


def test_host_keys_that_replicas_would_ignore_are_refused_naming_them() -> None:
    """A host's port (named replicas) or green_container (any) would be ignored: refused."""
    named = {"replica": [{"name": "a", "port": 7000, "green_port": 7001}]}
    hosts = [{"name": "hk", "engine": "ssh://hk.example.com", "port": 6221}]
    with pytest.raises(ConfigError, match=r"hosts\.hk\.port: \[\[service\.replica\]\]"):
        config(named, hosts=hosts)
    hosts = [{"name": "hk", "engine": "ssh://hk.example.com", "green_container": "g"}]
    with pytest.raises(ConfigError, match=r"hosts\.hk\.green_container: replica i's green"):
        config({"replicas": 2}, hosts=hosts)


def test_an_unknown_replica_is_refused_naming_the_known_ones() -> None:
    """--replica of no replica: a config error listing them."""
    with pytest.raises(ConfigError, match=r"no replica named 'x'; the replicas are: app-1, app-2"):
        pick(config({"replicas": 2}), None, "x")


@pytest.mark.parametrize(
    ("service", "message"),
    [
        ({"replicas": 0}, r"service\.replicas: Input should be greater than or equal to 1"),
        ({"replicas": 3, "tick_replica": 4}, r"service\.tick_replica is 4, but there are 3"),
        ({"replicas": 3, "port": 65_530}, r"service\.replica_port_step: 3 replicas 10 ports"),
        (
            {"replicas": 3, "green_port": 5231},
            r"service\.replica_port_step: app-2's port 5231 is also app-1's green_port",
        ),
        (
            {
                "replica": [
                    {"name": "a", "port": 1, "green_port": 2},
                    {"name": "b", "port": 2, "green_port": 4},
                ]
            },
            r"service\.replica\.b\.port: port 2 is also a's green_port",
        ),
        (
            {"replicas": 3, "replica": [{"name": "a", "port": 1, "green_port": 2}]},
            r"service\.replicas is 3 but 1 \[\[service\.replica\]\] are given",
        ),
        (
            {
                "replica": [
                    {"name": "a", "port": 1, "green_port": 2},
                    {"name": "b", "port": 3, "green_port": 4, "container": "a"},
                ]
            },
            r"service\.replica\.b\.container: 'a' is also a's container",
        ),
        (
            {"replica": [{"name": "a b", "port": 1, "green_port": 2}]},
            r"service\.replica\.0\.name: .*not a valid container name",
        ),
    ],
)
def test_bad_replicas_are_refused_naming_the_key(service: dict[str, Any], message: str) -> None:
    """Replicas that cannot all run (ports, names, counts) are a config error naming the key."""
    with pytest.raises(ConfigError, match=message):
        config(service)
