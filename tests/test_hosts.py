"""Several hosts without an engine: config validation, each host's own config, the
remote handoff's rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rolling_update import ConfigError
from rolling_update._config.settings import parse_config
from rolling_update._handoff.nft import RedirectRule, _replace, _ruleset, _target_in
from rolling_update._hosts.hosts import Unit, bypass_port, for_unit, pick, probe_address
from rolling_update._observe.history import HistoryEntry
from rolling_update._observe.history import append as history_append
from rolling_update._observe.history import now as history_now
from rolling_update._observe.metrics import write_metrics


def config(**extra: Any) -> Any:
    data: dict[str, Any] = {
        "service": {"name": "app", "green_name": "app-green", "port": 5221, "green_port": 5222},
        "image": {"name": "app:{version}", "version_file": "package.json"},
        "build": {"context": "."},
        "migrate": {"commands": [["migrate"]]},
        "env": {"ENV_REGION": "us", "A": "1"},
        "state": {"dir": "state"},
        **extra,
    }
    return parse_config(data, base_dir=Path("/srv"), environ={}, source="t.toml")


HOSTS = [
    {"name": "us", "engine": "unix:///var/run/docker.sock"},
    {
        "name": "hk",
        "engine": "ssh://deploy@hk.example.com",
        "env": {"ENV_REGION": "hk"},
        "port": 6221,
        "green_port": 6222,
        "container": "brain-hk",
    },
]


def test_each_host_gets_its_overrides_and_its_own_state_dir() -> None:
    """A host's env, ports and name apply over the shared config; its state has a dir of its own."""
    cfg = config(hosts=HOSTS)
    hk = for_unit(cfg, Unit(cfg.hosts[1]), first=False)
    assert hk.env == {"ENV_REGION": "hk", "A": "1"}
    assert (hk.service.port, hk.service.green_port, hk.service.name) == (6221, 6222, "brain-hk")
    assert hk.service.host == "hk.example.com"
    assert hk.state_dir == Path("/srv/state/hosts/hk/brain-hk")
    us = for_unit(cfg, Unit(cfg.hosts[0]), first=True)
    assert us.service.host == "127.0.0.1"
    assert us.state_dir == Path("/srv/state/hosts/us/app")


def test_only_the_canary_builds_and_migrates_unless_migrations_are_per_host() -> None:
    """Only the canary builds and migrates, unless migrations are per host."""
    cfg = config(hosts=HOSTS)
    canary, other = (for_unit(cfg, Unit(h), first=i == 0) for i, h in enumerate(cfg.hosts))
    assert canary.build.enabled and canary.migrate.commands
    assert not other.build.enabled and not other.migrate.commands
    per_host = config(hosts=HOSTS, rollout={"migrate": "per-host"})
    other = for_unit(per_host, Unit(per_host.hosts[1]), first=False)
    assert other.migrate.commands == [["migrate"]]


def test_without_hosts_the_config_is_used_as_it_is() -> None:
    """No [[hosts]]: one local host, and the config is untouched (state dir included)."""
    cfg = config()
    [local] = pick(cfg, None)
    assert for_unit(cfg, local, first=True) is cfg


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ([{"name": "a"}, {"name": "a"}], "hosts: the name 'a' is used twice"),
        ([{"name": "a", "engine": "http://x"}], "use unix://, tcp:// or ssh://"),
        ([{"name": "a b"}], "is not a valid host name"),
        ([{"name": "a", "port": 5222}], "hosts.a: port and green_port are both 5222"),
        ([{"name": "a", "bypass_port": 5221}], "bypass_port must differ"),
        ([{"name": "a", "probe": "telnet"}], "hosts.0.probe"),
    ],
)
def test_bad_hosts_are_refused_naming_the_key(hosts: list[dict[str, Any]], message: str) -> None:
    """A wrong [[hosts]] entry is a ConfigError that names the host or key."""
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config(hosts=hosts)


def test_host_env_expands_from_the_tool_environment_naming_a_missing_one() -> None:
    """${VAR} in a host's env expands like [env]; unset without default names the key."""
    with pytest.raises(ConfigError, match=r"hosts\.hk\.env\.TOKEN"):
        config(hosts=[{"name": "hk", "env": {"TOKEN": "${TOKEN}"}}])


def test_unknown_host_is_refused_listing_the_known_ones() -> None:
    """--host with a name not in the config names the hosts there are."""
    cfg = config(hosts=HOSTS)
    with pytest.raises(ConfigError, match="the hosts are: us, hk"):
        pick(cfg, "eu")


def test_bypass_port_and_probe_address_defaults() -> None:
    """The bypass port defaults to port ± 10000; a tcp host is probed at its engine's address."""
    cfg = config(
        hosts=[
            {"name": "a", "engine": "tcp://10.0.0.5:2376"},
            {"name": "b", "port": 60000, "green_port": 60001, "address": "b.internal"},
        ]
    )
    a, b = cfg.hosts
    assert (bypass_port(cfg, a), probe_address(cfg, a)) == (15221, "10.0.0.5")
    assert (bypass_port(cfg, b), probe_address(cfg, b)) == (50000, "b.internal")


def test_remote_ruleset_lets_the_bypass_port_reach_the_real_port_first() -> None:
    """The remote table sends the bypass port to production's port before the redirect rule."""
    text = _ruleset("t", 5221, 5222, 15221)
    assert text.index("dport 15221 redirect to :5221") < text.index("dport 5221 redirect to :5222")
    assert _target_in(text) == RedirectRule(5222)
    assert _target_in(text, 5221) == RedirectRule(5222)
    assert _target_in(text, 15221) == RedirectRule(5221)
    assert _replace("t", "").startswith("table inet t\ndelete table inet t\n")


def test_each_host_writes_its_own_metrics_file_labelled_with_its_name(tmp_path: Path) -> None:
    """Each host's metrics go to NAME-HOST.prom, every series labelled host=HOST."""
    cfg = config(hosts=HOSTS, metrics={"textfile": str(tmp_path / "ru.prom")})
    hk = for_unit(cfg, Unit(cfg.hosts[1]), first=False)
    assert hk.metrics.textfile == tmp_path / "ru-hk.prom"
    assert hk.metrics.labels == {"host": "hk"}
    hk = hk.model_copy(update={"state": hk.state.model_copy(update={"dir": tmp_path})})
    stamp = history_now()
    entry = HistoryEntry(
        id="1", kind="deploy", service="brain-hk", started_at=stamp, ended_at=stamp,
        user="u", host="h", result="deployed", seconds=3.0,
    )  # fmt: skip
    history_append(hk.state_dir, entry)
    write_metrics(hk)
    text = (tmp_path / "ru-hk.prom").read_text()
    assert (
        'rolling_update_runs_total{host="hk",kind="deploy",result="deployed",service="brain-hk"}'
        in text
    )
    assert 'rolling_update_last_duration_seconds{host="hk",service="brain-hk"} 3.0' in text
