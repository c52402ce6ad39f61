"""The release being deployed: its version, image and env, read from the files the config names."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rolling_update._config.settings import Config, read_env_file, read_version
from rolling_update._errors import ConfigError
from rolling_update._observe.logs import register_secrets, secret_values


@dataclass(frozen=True)
class Release:
    """What is being deployed, read from the files the config names."""

    version: str
    image: str
    env: Mapping[str, str] = field(repr=False)


def prepare(
    cfg: Config, environ: Mapping[str, str] | None = None, *, version: str | None = None
) -> Release:
    """Read and check every file the config names; touches nothing.

    ``version`` (a rollback) is deployed as it is, without the version file.
    """
    version = version if version is not None else read_version(cfg.image)
    env: dict[str, str] = {}
    if cfg.service.env_file is not None:
        env.update(read_env_file(cfg.service.env_file, environ))
    env.update(cfg.env)
    # The metrics gate's URL as an ordinary value: its userinfo, as any URL's, is a secret.
    metrics = cfg.switch.gate_metrics_url
    register_secrets(
        secret_values(
            {
                **env,
                **cfg.green.env,
                **cfg.build.args,
                **({"switch.gate_metrics_url": metrics} if metrics else {}),
            },
            extra=cfg.secrets.keys,
            public=cfg.secrets.public,
        )
    )
    if cfg.build.enabled and cfg.build.context is not None:
        if not cfg.build.context.is_dir():
            raise ConfigError("not a directory", source=str(cfg.build.context), key="build.context")
        if not (cfg.build.context / cfg.build.dockerfile).is_file():
            raise ConfigError(
                f"no {cfg.build.dockerfile} in the build context",
                source=str(cfg.build.context),
                key="build.dockerfile",
            )
    return Release(version=version, image=cfg.image.name.format(version=version), env=env)
