"""Registry credentials read as the docker CLI keeps them, never logged, never guessed."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from rolling_update import ConfigError
from rolling_update._config.settings import registry_of
from rolling_update._engine.registry import registry_auth
from rolling_update._observe.logs import redactor


def decoded(header: str) -> object:
    return json.loads(base64.urlsafe_b64decode(header))


def test_registry_is_read_from_the_image_reference_as_docker_reads_it() -> None:
    """A first component with a dot, a port or 'localhost' is a registry; else Docker Hub."""
    assert registry_of("registry.example.com/brain:1") == "registry.example.com"
    assert registry_of("10.0.0.1:5000/brain:1") == "10.0.0.1:5000"
    assert registry_of("localhost/brain") == "localhost"
    assert registry_of("library/brain:1") is None
    assert registry_of("brain:1") is None


def test_auth_entry_becomes_the_header_and_its_password_a_secret(tmp_path: Path) -> None:
    """An auths entry becomes the X-Registry-Auth header; its password is a secret."""
    auth = base64.b64encode(b"deploy:s3cr3t-pw").decode()
    (tmp_path / "config.json").write_text(
        json.dumps({"auths": {"reg.example.com": {"auth": auth}}})
    )
    header = registry_auth("reg.example.com/brain:1", {"DOCKER_CONFIG": str(tmp_path)})
    assert decoded(header) == {
        "username": "deploy",
        "password": "s3cr3t-pw",
        "serveraddress": "reg.example.com",
    }
    assert "s3cr3t-pw" not in str(redactor.scrub("login with s3cr3t-pw"))


def test_no_credentials_is_anonymous_and_a_helper_is_refused(tmp_path: Path) -> None:
    """No entry is anonymous; a registry behind a credential helper is refused."""
    environ = {"DOCKER_CONFIG": str(tmp_path)}
    assert decoded(registry_auth("reg.example.com/brain:1", environ)) == {}
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "desktop"}))
    with pytest.raises(ConfigError, match="credential helper"):
        registry_auth("reg.example.com/brain:1", environ)


def test_registry_distribution_needs_a_registry_in_the_image_name() -> None:
    """rollout.distribute = registry with an image name that names no registry is refused."""
    from rolling_update._config.settings import parse_config

    data = {
        "service": {"name": "a", "green_name": "a-green", "port": 1, "green_port": 2},
        "image": {"name": "brain:{version}", "version_file": "p.json"},
        "rollout": {"distribute": "registry"},
    }
    with pytest.raises(ConfigError, match=r"image\.name must start with the registry's host"):
        parse_config(data, base_dir=Path("/"), environ={}, source="t.toml")
