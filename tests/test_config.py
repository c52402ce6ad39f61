"""Config loading: the example file, validation messages, env expansion, env files."""

from __future__ import annotations

import copy
import json
import re
import string
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rolling_update import Config, ConfigError, load_config
from rolling_update._config.settings import expand, parse_config, read_env_file, read_version

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"


def minimal() -> dict[str, Any]:
    return {
        "service": {"name": "app", "green_name": "app-green", "port": 8000, "green_port": 8001},
        "image": {"name": "app:{version}", "version_file": "package.json"},
    }


def parse(data: dict[str, Any], environ: dict[str, str] | None = None) -> Any:
    return parse_config(data, base_dir=Path("/srv"), environ=environ or {}, source="t.toml")


def test_example_config_loads_with_the_reference_values() -> None:
    """config.example.toml is valid and holds the reference service's PRD values."""
    cfg = load_config(EXAMPLE, environ={})
    assert (cfg.service.name, cfg.service.green_name) == (
        "cecelia-node-brain",
        "cecelia-node-brain-green",
    )
    assert (cfg.service.port, cfg.service.green_port) == (5221, 5222)
    assert cfg.service.network == "host" and cfg.service.restart == "unless-stopped"
    assert cfg.service.env_file == ROOT / ".env.docker"
    assert cfg.image.name.format(version="1.2.3") == "cecelia-brain:1.2.3"
    assert cfg.image.version_file == ROOT / "brain" / "package.json"
    assert cfg.migrate.commands == [["node", "src/migrate.js"]]
    assert cfg.health.expect_json == {"status": "healthy"}
    assert (cfg.health.attempts, cfg.health.interval) == (12, 5.0)
    assert cfg.tick.settle == 10
    assert cfg.env == {"ENV_REGION": "us", "CECELIA_TICK_ENABLED": "true"}
    assert cfg.green.env == {}
    one = [a for a in cfg.actions if a.replicas != "others"]
    assert [(a.moment, a.target, a.path) for a in one] == [
        ("green-answers", "green", "/api/brain/tick/drain"),
        ("before-switch", "blue", "/api/brain/tick/drain"),
        ("rollback", "blue", "/api/brain/tick/drain-cancel"),
        ("rollback", "blue", "/api/brain/tick/enable"),
    ]
    # The replicas that do not own the tick loop: drained whenever a process of theirs boots.
    assert [(a.moment, a.target, a.path) for a in cfg.actions if a.replicas == "others"] == [
        ("production-answers", "production", "/api/brain/tick/drain"),
        ("rollback", "blue", "/api/brain/tick/drain"),
    ]
    # Never a drain-status read: its first answer with nothing in progress disables the tick.
    assert all(a.wait is None for a in cfg.actions)
    unless = one[3].unless
    assert unless is not None and (unless.field, unless.equals) == ("loop_running", True)
    assert cfg.image.tags == ["latest"]
    assert cfg.migrate.blue_check == ["node", "src/selfcheck.js"]
    assert cfg.tick.overdue == 30
    assert cfg.health.version_path == "/api/brain/hardening/status"


def test_env_region_is_inherited_from_the_tool_environment() -> None:
    """${ENV_REGION:-us} takes the caller's ENV_REGION when it is set."""
    cfg = load_config(EXAMPLE, environ={"ENV_REGION": "eu"})
    assert cfg.env["ENV_REGION"] == "eu"


def test_unknown_key_is_rejected_naming_it() -> None:
    """An unknown key fails validation with its dotted path in the message."""
    data = minimal()
    data["service"]["prot"] = 1
    with pytest.raises(ConfigError, match=r"t\.toml: service\.prot: Extra inputs"):
        parse(data)


def test_equal_ports_are_rejected() -> None:
    """port and green_port must differ."""
    data = minimal()
    data["service"]["green_port"] = 8000
    with pytest.raises(ConfigError, match="must differ"):
        parse(data)


@pytest.mark.parametrize(
    ("engine", "rollback", "message"),
    [
        ({"call_timeout": 0}, {}, r"engine\.call_timeout: Input should be greater than 0"),
        ({"call_timeout": 30}, {}, r"engine\.call_timeout \(30\) must be shorter than rollback"),
        ({}, {"step_timeout": 10}, r"engine\.call_timeout \(15\) must be shorter than rollback"),
    ],
)
def test_engine_call_timeout_must_fit_an_undo(
    engine: dict[str, Any], rollback: dict[str, Any], message: str
) -> None:
    """engine.call_timeout is positive and shorter than rollback.step_timeout."""
    data = {**minimal(), "engine": engine, "rollback": rollback}
    with pytest.raises(ConfigError, match=message):
        parse(data)
    assert parse({**minimal(), "engine": {"call_timeout": 2.5}}).engine.call_timeout == 2.5


@pytest.mark.parametrize("port", [0, 65536, -1, "x"])
def test_out_of_range_port_is_rejected(port: object) -> None:
    """Ports outside 1..65535 (or not integers) fail, naming service.port."""
    data = minimal()
    data["service"]["port"] = port
    with pytest.raises(ConfigError, match=r"service\.port"):
        parse(data)


def test_bad_container_name_is_rejected() -> None:
    """Container names must be valid Docker names."""
    data = minimal()
    data["service"]["name"] = "bad name!"
    with pytest.raises(ConfigError, match=r"service\.name"):
        parse(data)


def test_validation_errors_never_echo_env_values() -> None:
    """A wrong-typed env value is reported by key, and its value is not quoted."""
    data = minimal()
    data["env"] = {"TOKEN": ["s3cr3t-value"]}
    with pytest.raises(ConfigError) as caught:
        parse(data)
    assert "env.TOKEN" in str(caught.value) and "s3cr3t-value" not in str(caught.value)


def test_build_needs_exactly_one_way() -> None:
    """An enabled build needs either a context or a command, not both."""
    data = minimal()
    data["build"] = {"context": ".", "command": ["make"]}
    with pytest.raises(ConfigError, match=r"exactly one of build\.context and build\.command"):
        parse(data)


def test_unset_variable_without_default_names_the_key() -> None:
    """${VAR} with VAR unset and no default is an error naming env.KEY."""
    data = minimal()
    data["env"] = {"REGION": "${NOPE}"}
    with pytest.raises(ConfigError, match=r"env\.REGION: \$\{NOPE\} is not set"):
        parse(data)


def test_expansion_forms() -> None:
    """${A}, ${A:-d} (also for empty A) and $$ expand as in compose files."""
    env = {"A": "x", "E": ""}
    assert expand("${A}-${B:-d}-${E:-e}-$$A", env, key="k") == "x-d-e-$A"


def test_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    """Relative paths in the file are relative to the file, not to the working directory."""
    (tmp_path / "c.toml").write_text(
        '[service]\nname="a"\ngreen_name="b"\nport=1\ngreen_port=2\nenv_file=".env"\n'
        '[image]\nname="i:{version}"\nversion_file="sub/p.json"\n'
    )
    cfg = load_config(tmp_path / "c.toml", environ={})
    assert cfg.service.env_file == tmp_path / ".env"
    assert cfg.image.version_file == tmp_path / "sub" / "p.json"


def test_missing_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    """A missing config file and broken TOML both produce a ConfigError naming the file."""
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read config"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[service\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_config(tmp_path / "bad.toml")


def test_env_file_format(tmp_path: Path) -> None:
    """Env files follow docker's rules: comments, no quote stripping, bare names from the env."""
    path = tmp_path / ".env"
    path.write_text('# c\n\nA=1\nB="q"\nC=x=y\nFROM_ENV\nUNSET\n')
    assert read_env_file(path, {"FROM_ENV": "e"}) == {
        "A": "1",
        "B": '"q"',
        "C": "x=y",
        "FROM_ENV": "e",
    }


def test_env_file_errors_do_not_quote_values(tmp_path: Path) -> None:
    """A bad line is reported by number without its content."""
    path = tmp_path / ".env"
    path.write_text("GOOD=1\nBAD NAME=secret-stuff\n")
    with pytest.raises(ConfigError, match="line 2") as caught:
        read_env_file(path, {})
    assert "secret-stuff" not in str(caught.value)


def test_version_file(tmp_path: Path) -> None:
    """The version comes from the JSON key; a missing key or non-tag value is rejected."""
    from rolling_update._config.settings import ImageConfig

    path = tmp_path / "package.json"
    path.write_text(json.dumps({"version": "1.4.0"}))
    assert read_version(ImageConfig(name="x:{version}", version_file=path)) == "1.4.0"
    path.write_text(json.dumps({"version": "1 4"}))
    with pytest.raises(ConfigError, match="not usable as an image tag"):
        read_version(ImageConfig(name="x:{version}", version_file=path))
    path.write_text("{nope")
    with pytest.raises(ConfigError, match="not JSON"):
        read_version(ImageConfig(name="x:{version}", version_file=path))


toml_scalars = st.one_of(
    st.integers(-(2**31), 2**31),
    st.text(string.printable, max_size=12),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(string.ascii_lowercase + "_", min_size=1, max_size=8), inner, max_size=4
        )
    ),
    max_leaves=12,
)


REQUIRED = ("service", "image")
"""The tables a document cannot leave out."""


def named_key(error: ConfigError, document: dict[str, Any], source: str) -> str:
    """The key the error names first, after the file; it must be one of ``document``'s
    tables, or one it lacks and needs, or the document as a whole."""
    where = re.match(rf"{re.escape(source)}: ([^:;]+): ", str(error))
    assert where is not None, f"no file and key in {error}"
    table = where.group(1).split(".")[0]
    assert table in document or table in REQUIRED or table == "(top level)", str(error)
    return where.group(1)


@settings(max_examples=300, deadline=None)
@given(
    st.booleans(),
    st.dictionaries(
        st.sampled_from(["service", "image", "build", "env", "health", "tick", "junk"]),
        toml_values,
        max_size=5,
    ),
)
def test_arbitrary_documents_fail_only_with_config_error(
    on_minimal: bool, tables: dict[str, Any]
) -> None:
    """Any document validates, keeping its values and defaults, or fails naming file and key."""
    data = {**(minimal() if on_minimal else {}), **tables}
    before = copy.deepcopy(data)
    try:
        cfg = parse(data)
    except ConfigError as exc:
        named_key(exc, data, "t.toml")
    else:
        assert cfg.service.name == data["service"]["name"]
        assert cfg.image.name == data["image"]["name"]
        defaults = parse(minimal())
        for table in set(type(cfg).model_fields) - set(data):
            assert getattr(cfg, table) == getattr(defaults, table), table
    assert data == before  # the document is read, never changed


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_fail_only_with_config_error(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    """A file loads as its TOML parses, or fails naming the file and its encoding, TOML or key."""
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_bytes(raw)
    data: dict[str, Any] | None = None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        why = "config is not UTF-8 text"
    except tomllib.TOMLDecodeError:
        why = "invalid TOML"
    loaded = config_or_error(lambda: load_config(path, environ={}))
    if data is None:
        assert isinstance(loaded, ConfigError) and loaded.source == str(path)
        assert str(loaded).startswith(f"{path}: {why}"), str(loaded)
        return
    parsed = config_or_error(
        lambda: parse_config(data, base_dir=path.resolve().parent, environ={}, source=str(path))
    )
    if isinstance(parsed, ConfigError):
        assert isinstance(loaded, ConfigError) and str(loaded) == str(parsed)
        named_key(loaded, data, str(path))
    else:
        assert loaded == parsed


def config_or_error(load: Callable[[], Config]) -> Config | ConfigError:
    try:
        return load()
    except ConfigError as exc:
        return exc


def test_example_documents_every_key_with_a_comment() -> None:
    """config.example.toml sets every key the config knows, each on a commented line."""
    from pydantic import BaseModel

    from rolling_update import Config
    from rolling_update._config.settings import ActionConfig, HostConfig, ReplicaConfig

    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    for section, field in Config.model_fields.items():
        model = field.annotation
        if section == "env":
            continue
        if section == "hosts":
            # Commented out: a [[hosts]] list makes every deploy a rollout.
            shown = set(re.findall(r"(?m)^# (\w+) = ", text))
            assert set(HostConfig.model_fields) <= shown, "[[hosts]] lacks keys"
            continue
        if section == "service":
            # Commented out: [[service.replica]] tables replace the derived replicas.
            shown = set(re.findall(r"(?m)^# (\w+) = ", text))
            assert set(ReplicaConfig.model_fields) <= shown, "[[service.replica]] lacks keys"
        assert section in data, f"[{section}] missing from the example"
        if section == "actions":
            # A list of tables: every key is shown in one of them at least, or as a
            # commented-out sub-table (the reference sequence waits for nothing).
            shown = set().union(*(set(action) for action in data["actions"]))
            shown |= set(re.findall(r"(?m)^# \[actions\.(\w+)\]", text))
            assert set(ActionConfig.model_fields) <= shown, "[[actions]] lacks keys"
            continue
        assert isinstance(model, type) and issubclass(model, BaseModel)
        missing = set(model.model_fields) - set(data[section])
        # build.command is the alternative to build.context, state.dir defaults per user,
        # build.target has no default, the Brain has no drain signal or request, the
        # shift's optional gates are off: shown commented out.
        assert missing <= {
            "command",
            "dir",
            "target",
            "textfile",
            "drain_signal",
            "drain_request",
            "gate_metrics_url",
            "gate_metrics_max",
            "gate_memory_mb",
            "replica",
        }, f"[{section}] lacks {sorted(missing)}"
        for key in missing:
            assert re.search(rf"(?m)^# {key} = ", text), f"{section}.{key} is not shown"
    key_lines = [ln for ln in text.splitlines() if "=" in ln and not ln.lstrip().startswith("#")]
    assert [ln for ln in key_lines if "#" not in ln] == []


@pytest.mark.anyio
async def test_buildkit_is_chosen_only_where_the_cli_can_drive_it() -> None:
    """No such CLI: auto falls back to classic saying why; buildkit required is a config error."""
    from rolling_update._config.settings import BuildConfig
    from rolling_update._engine.builder import choose_builder

    missing = BuildConfig(context=Path("."), docker_cli="/nonexistent/docker")
    builder, why = await choose_builder(missing)
    assert builder == "classic" and "no docker CLI '/nonexistent/docker'" in why
    assert (await choose_builder(BuildConfig(context=Path("."), builder="classic")))[0] == (
        "classic"
    )
    with pytest.raises(ConfigError, match=r"build\.builder: BuildKit cannot be used"):
        await choose_builder(missing.model_copy(update={"builder": "buildkit"}))
