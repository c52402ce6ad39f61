"""Registry credentials for push and pull through the engine API, as the docker CLI has them.

The engine takes them per request, in the ``X-Registry-Auth`` header (base64url
JSON). They are read from the CLI's own ``config.json`` (``$DOCKER_CONFIG``, else
``~/.docker``): an ``auths`` entry's ``auth`` (``user:password``) or
``identitytoken``. Credential helpers (``credsStore``) are not run: a registry
that needs one gets a clear error rather than an anonymous push.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rolling_update._config.settings import registry_of
from rolling_update._errors import ConfigError
from rolling_update._observe.logs import register_secrets


def docker_config_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    folder = environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    return Path(folder) / "config.json"


def registry_auth(image: str, environ: Mapping[str, str] | None = None) -> str:
    """The X-Registry-Auth header for ``image``'s registry (anonymous when none is set)."""
    registry = registry_of(image) or "docker.io"
    path = docker_config_path(environ)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read docker credentials: {exc}", source=str(path)) from None
    auths = data.get("auths") if isinstance(data, dict) else None
    auths = auths if isinstance(auths, dict) else {}
    entry = auths.get(registry) or auths.get(f"https://{registry}") or {}
    payload: dict[str, str] = {}
    if isinstance(entry, dict) and entry.get("identitytoken"):
        token = str(entry["identitytoken"])
        register_secrets([token])
        payload = {"identitytoken": token, "serveraddress": registry}
    elif isinstance(entry, dict) and entry.get("auth"):
        try:
            user, _, password = base64.b64decode(str(entry["auth"])).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(
                f"auths.{registry}.auth is not base64 of user:password", source=str(path)
            ) from None
        register_secrets([password])
        payload = {"username": user, "password": password, "serveraddress": registry}
    elif isinstance(data, dict) and (
        data.get("credsStore") or registry in (data.get("credHelpers") or {})
    ):
        raise ConfigError(
            f"credentials for {registry} are kept by a credential helper, which this tool "
            "does not run; log in with a plain auth entry, or use rollout.distribute = stream",
            source=str(path),
        )
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()
