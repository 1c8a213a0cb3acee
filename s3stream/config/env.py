"""What the settings read from outside the file: the region the environment names, ``S3STREAM_…``
overrides, and ``s3://BUCKET/PREFIX`` URLs."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

ENV_PREFIX = "S3STREAM_"
DEFAULT_REGION = "us-east-1"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` to ``("bucket", "some/prefix/")``.

    Not ``urlparse``: ``?`` and ``#`` are legal in keys and must stay part of the prefix.
    """
    scheme, sep, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme != "s3" or not sep or not bucket:
        raise ValueError(f"expected s3://BUCKET/PREFIX, got {url!r}")
    return bucket, prefix


def env_region(environ: Mapping[str, str]) -> str:
    """The region the environment names: ``AWS_REGION`` (the AWS SDKs' variable), else
    ``AWS_DEFAULT_REGION`` (the AWS CLI's), else us-east-1. ``[s3] region`` (or a flag) beats both."""
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, Any]]:
    """``S3STREAM_SECTION__KEY=value`` variables as ``{(section, key): (variable, value)}``.

    Values are read as TOML values when they parse (``8``, ``true``, ``2.5``, ``"x"``), else as
    strings. Variables without ``__`` (such as ``S3STREAM_LOG_LEVEL``) are not config.
    """
    out: dict[tuple[str, ...], tuple[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX):].split("__"))
        try:
            value: Any = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out[path] = (name, value)
    return out
