"""Loading settings: a TOML file and ``S3STREAM_…`` variables and command-line flags over it, validated
once into :class:`~s3stream.config.Settings`.

A bad value raises :class:`~s3stream.errors.ConfigError` whose message names the field
(``consumer.concurrency: Input should be greater than 0 (got -1)``).
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from s3stream.config.env import env_overrides, env_region
from s3stream.config.sources import Settings
from s3stream.errors import ConfigError


def build_settings(data: dict[str, Any], *, environ: Mapping[str, str] | None = None,
                   cli: dict[str, Any] | None = None) -> Settings:
    """Validate a plain dict (as read from TOML), with ``S3STREAM_…`` overrides from ``environ``
    (the process environment unless given) and then the command line's (``cli``, nested like the
    file: a flag beats the environment, which beats the file), into :class:`Settings`, or raise
    ConfigError."""
    environ = os.environ if environ is None else environ
    overrides = env_overrides(environ)
    data = copy.deepcopy(data)
    if cli:
        overrides.update({path: ("the command line", value) for path, value in _leaves(cli)})
    for path, (_, value) in overrides.items():
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
            node = child
        node[path[-1]] = value
    s3 = data.setdefault("s3", {})
    if isinstance(s3, dict) and s3.get("region") is None:
        s3["region"] = env_region(environ)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        origins = {".".join(path): name for path, (name, _) in overrides.items()}
        raise ConfigError(describe_validation_error(exc, origins)) from None


def _leaves(tree: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """The (path, value) pairs of a nested dict's non-dict values."""
    out: list[tuple[tuple[str, ...], Any]] = []
    for key, value in tree.items():
        out += _leaves(value, (*path, key)) if isinstance(value, dict) else [((*path, key), value)]
    return out


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a plain dict, or ConfigError naming the file."""
    file = Path(path)
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"config file not found: {file}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot be read: {exc.strerror or exc}") from None


def load_settings(path: str | Path) -> Settings:
    """Read and validate a TOML config file."""
    return build_settings(read_toml(path))


def describe_validation_error(exc: ValidationError, origins: Mapping[str, str] | None = None) -> str:
    """pydantic's errors as ``field.path: what is wrong (got VALUE)`` lines joined by ``; ``;
    a field set from the environment names its variable."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "config"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown setting"
        got = err.get("input")
        shown = err["type"] != "missing" and not isinstance(got, dict | list) and "secret" not in field
        suffix = f" (got {got!r})" if shown else ""
        origin = (origins or {}).get(field)
        parts.append(f"{field}: {message}{suffix}" + (f" (from {origin})" if origin else ""))
    return "invalid config: " + "; ".join(parts)
