"""Settings: pydantic models, loaded from TOML, validated once at start.

A bad value raises :class:`~s3stream.errors.ConfigError` whose message names the field
(``consumer.concurrency: Input should be greater than 0 (got -1)``). The models are in
:mod:`~s3stream.config.sections` (store and engine) and :mod:`~s3stream.config.sources` (what is
consumed, and :class:`Settings`); every field carries a ``description``, from which
``scripts/gen_docs.py`` writes the configuration reference and ``config/full.toml``.
"""

from s3stream.config.env import DEFAULT_REGION, ENV_PREFIX, env_overrides, env_region, parse_s3_url
from s3stream.config.loading import (
    build_settings,
    describe_validation_error,
    load_settings,
    read_toml,
)
from s3stream.config.sections import (
    CheckpointSettings,
    ConsumerSettings,
    LeaseSettings,
    MetricsSettings,
    ProducerSettings,
    S3Settings,
    TracingSettings,
)
from s3stream.config.sources import (
    HandlerSettings,
    NotificationSettings,
    RouteSettings,
    Settings,
    SnapshotSettings,
    SourceSettings,
)

__all__ = [
    "DEFAULT_REGION",
    "ENV_PREFIX",
    "CheckpointSettings",
    "ConsumerSettings",
    "HandlerSettings",
    "LeaseSettings",
    "MetricsSettings",
    "NotificationSettings",
    "ProducerSettings",
    "RouteSettings",
    "S3Settings",
    "Settings",
    "SnapshotSettings",
    "SourceSettings",
    "TracingSettings",
    "build_settings",
    "describe_validation_error",
    "env_overrides",
    "env_region",
    "load_settings",
    "parse_s3_url",
    "read_toml",
]
