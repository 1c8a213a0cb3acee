"""Settings: defaults, validation errors that name the field, TOML loading, S3 URLs and endpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3stream.config import (
    HandlerSettings,
    S3Settings,
    Settings,
    SourceSettings,
    build_settings,
    load_settings,
    parse_s3_url,
)
from s3stream.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def config_error(data: dict[str, object]) -> str:
    """The message of the ConfigError ``build_settings(data)`` raises."""
    with pytest.raises(ConfigError) as info:
        build_settings(data)
    return str(info.value)


# --- defaults -----------------------------------------------------------------------------------------


def test_defaults_are_sensible() -> None:
    """An empty config is valid and gives the documented defaults: safe settle window, bounded queue,
    start at the earliest version, checkpoints in S3 under the control prefix."""
    settings = build_settings({})
    assert settings == Settings()
    c = settings.consumer
    assert c.group == "default"
    assert c.concurrency == 64
    assert c.queue_size == 1000
    assert c.settle_window == 30.0
    assert c.start_from == "earliest"
    assert c.page_size == 1000
    assert c.handler_attempts >= 1
    assert c.poll_interval is None  # chosen by the kind of bucket (tests/test_pacing.py)
    assert c.max_poll_interval == 5.0
    assert c.shutdown_grace > 0
    assert c.checkpoint.store == "s3"
    assert c.checkpoint.prefix == "_s3stream/checkpoints"
    assert c.checkpoint.interval > 0
    s3 = settings.s3
    assert s3.endpoint_url is None
    assert s3.region == "us-east-1"
    assert s3.addressing_style == "auto"
    assert s3.max_attempts >= 1
    assert s3.connect_timeout > 0
    assert s3.read_timeout > 0
    assert settings.sources == []
    assert settings.handlers == {}


def test_settings_are_frozen() -> None:
    """Settings are validated once and cannot be changed afterwards."""
    settings = build_settings({})
    with pytest.raises(ValueError, match="frozen"):
        settings.consumer.concurrency = 0  # type: ignore[misc]


def test_full_config_is_read() -> None:
    """Values given in the dict land in the right fields, nested ones included."""
    settings = build_settings({
        "s3": {"endpoint_url": "http://127.0.0.1:9000", "addressing_style": "path", "region": "eu-west-1"},
        "consumer": {"group": "billing-2", "concurrency": 4, "settle_window": 0,
                     "checkpoint": {"store": "file", "directory": "/var/lib/s3s"}},
        "sources": [{"url": "s3://bkt/events/", "handler": "out"}],
        "handlers": {"out": {"use": "jsonl", "path": "/tmp/out.jsonl"}},
    })
    assert settings.s3.endpoint_url == "http://127.0.0.1:9000"
    assert settings.s3.addressing_style == "path"
    assert settings.consumer.group == "billing-2"
    assert settings.consumer.concurrency == 4
    assert settings.consumer.settle_window == 0
    assert settings.consumer.checkpoint.store == "file"
    assert settings.consumer.checkpoint.directory == "/var/lib/s3s"
    assert settings.sources[0].bucket == "bkt"
    assert settings.sources[0].prefix == "events/"
    assert settings.sources[0].handler == "out"
    assert settings.handlers["out"].use == "jsonl"


def test_source_handler_defaults_to_stdout() -> None:
    """A source without a handler prints to stdout."""
    assert SourceSettings(url="s3://b/p/").handler == "stdout"


def test_secret_is_not_shown() -> None:
    """The secret access key is kept as a secret: printing the settings does not reveal it."""
    settings = build_settings({"s3": {"access_key_id": "AKIAEXAMPLE", "secret_access_key": "hunter2-secret"}})
    assert "hunter2-secret" not in repr(settings)
    assert "hunter2-secret" not in str(settings)
    assert settings.s3.secret_access_key is not None
    assert settings.s3.secret_access_key.get_secret_value() == "hunter2-secret"


# --- validation errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "field", "value"), [
    ({"consumer": {"concurrency": -1}}, "consumer.concurrency", "-1"),
    ({"consumer": {"concurrency": 0}}, "consumer.concurrency", "0"),
    ({"consumer": {"concurrency": 5000}}, "consumer.concurrency", "5000"),
    ({"consumer": {"concurrency": "many"}}, "consumer.concurrency", "'many'"),
    ({"consumer": {"settle_window": -5}}, "consumer.settle_window", "-5"),
    ({"consumer": {"page_size": 1001}}, "consumer.page_size", "1001"),
    ({"consumer": {"start_from": "middle"}}, "consumer.start_from", "'middle'"),
    ({"consumer": {"group": "has space"}}, "consumer.group", "'has space'"),
    ({"consumer": {"group": "a/b"}}, "consumer.group", "'a/b'"),
    ({"consumer": {"checkpoint": {"store": "redis"}}}, "consumer.checkpoint.store", "'redis'"),
    ({"consumer": {"checkpoint": {"interval": 0}}}, "consumer.checkpoint.interval", "0"),
    ({"s3": {"addressing_style": "sideways"}}, "s3.addressing_style", "'sideways'"),
    ({"s3": {"max_attempts": 0}}, "s3.max_attempts", "0"),
    ({"s3": {"read_timeout": -1.5}}, "s3.read_timeout", "-1.5"),
    ({"sources": [{"url": "s3://ok/a/"}, {"url": "http://bkt/p/"}]}, "sources.1.url", "'http://bkt/p/'"),
])
def test_bad_value_names_dotted_field_and_value(data: dict[str, object], field: str, value: str) -> None:
    """A bad value raises ConfigError whose message names the dotted field path and the bad value."""
    message = config_error(data)
    assert message.startswith("invalid config: ")
    assert f"{field}: " in message
    assert value in message


def test_concurrency_message_matches_documented_form() -> None:
    """The message reads ``consumer.concurrency: <what is wrong> (got -1)`` as the docs show."""
    message = config_error({"consumer": {"concurrency": -1}})
    assert "consumer.concurrency: Input should be greater than 0 (got -1)" in message


def test_every_bad_field_is_reported() -> None:
    """Several bad values are all reported in one message, not just the first."""
    message = config_error({"consumer": {"concurrency": 0, "queue_size": -1}, "s3": {"max_attempts": 0}})
    assert "consumer.concurrency" in message
    assert "consumer.queue_size" in message
    assert "s3.max_attempts" in message


@pytest.mark.parametrize(("data", "field"), [
    ({"consumer": {"concurency": 4}}, "consumer.concurency"),
    ({"consumr": {}}, "consumr"),
    ({"s3": {"endpoint": "http://x"}}, "s3.endpoint"),
    ({"consumer": {"checkpoint": {"bucket": "x"}}}, "consumer.checkpoint.bucket"),
    ({"sources": [{"url": "s3://b/p/", "hander": "x"}]}, "sources.0.hander"),
])
def test_unknown_key_is_rejected_naming_it(data: dict[str, object], field: str) -> None:
    """A misspelt or unknown key is an error naming the key, never silently ignored."""
    message = config_error(data)
    assert f"{field}: unknown setting" in message


def test_missing_required_fields_are_named() -> None:
    """A source without ``url`` and a handler section without ``use`` name the missing field."""
    message = config_error({"sources": [{"handler": "stdout"}], "handlers": {"h": {"path": "x"}}})
    assert "sources.0.url: Field required" in message
    assert "handlers.h.use: Field required" in message


def test_wrong_section_type_is_config_error() -> None:
    """A section of the wrong type (``sources`` as a string) is a ConfigError naming it."""
    message = config_error({"sources": "s3://b/p/"})
    assert "sources" in message


# --- handler sections --------------------------------------------------------------------------------


def test_handler_section_extra_keys_are_options() -> None:
    """``[handlers.NAME]`` accepts extra keys and exposes them, minus ``use``, through options()."""
    settings = build_settings({"handlers": {
        "archive": {"use": "jsonl", "path": "/tmp/a.jsonl"},
        "db": {"use": "pkg.mod:factory", "dsn": "postgres://x", "batch": 50, "tags": {"a": 1}},
        "plain": {"use": "stdout"},
    }})
    assert settings.handlers["archive"].options() == {"path": "/tmp/a.jsonl"}
    assert settings.handlers["db"].use == "pkg.mod:factory"
    assert settings.handlers["db"].options() == {"dsn": "postgres://x", "batch": 50, "tags": {"a": 1}}
    assert settings.handlers["plain"].options() == {}


def test_handler_options_are_a_copy() -> None:
    """Changing the dict options() returns does not change the settings."""
    h = HandlerSettings(use="jsonl", path="a")  # type: ignore[call-arg]
    opts = h.options()
    opts["path"] = "b"
    assert h.options() == {"path": "a"}


# --- TOML files ---------------------------------------------------------------------------------------


def test_load_settings_reads_toml(tmp_path: Path) -> None:
    """``load_settings`` reads a TOML file into validated settings, ``[handlers.NAME]`` included."""
    path = tmp_path / "s3stream.toml"
    path.write_text(
        '[consumer]\nconcurrency = 3\n\n'
        '[[sources]]\nurl = "s3://bkt/events/"\nhandler = "archive"\n\n'
        '[handlers.archive]\nuse = "jsonl"\npath = "out.jsonl"\n',
        encoding="utf-8",
    )
    settings = load_settings(path)
    assert settings.consumer.concurrency == 3
    assert settings.sources[0].bucket == "bkt"
    assert settings.handlers["archive"].options() == {"path": "out.jsonl"}


def test_load_settings_missing_file_names_it(tmp_path: Path) -> None:
    """A missing config file is a ConfigError naming the file."""
    path = tmp_path / "nope" / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert "not found" in str(info.value)


def test_load_settings_invalid_toml_names_file(tmp_path: Path) -> None:
    """A file that is not valid TOML is a ConfigError naming the file and saying so."""
    path = tmp_path / "broken.toml"
    path.write_text("[consumer\nconcurrency = = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert "TOML" in str(info.value)


def test_load_settings_non_utf8_file_names_file(tmp_path: Path) -> None:
    """A file that is not UTF-8 (so not valid TOML either) is a ConfigError naming the file, not a raw
    UnicodeDecodeError that the CLI would print as a traceback."""
    path = tmp_path / "latin1.toml"
    path.write_bytes('[consumer]\ngroup = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_load_settings_bad_value_in_file_names_field(tmp_path: Path) -> None:
    """A bad value in a valid TOML file is still reported by its dotted field."""
    path = tmp_path / "bad.toml"
    path.write_text("[consumer]\nconcurrency = -1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"consumer\.concurrency: .*\(got -1\)"):
        load_settings(path)


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.toml")), ids=lambda path: path.name)
def test_example_configs_load(path: Path) -> None:
    """Every example config shipped in config/ loads and validates, with at least one source (or, for
    the snapshot follower's service, the file it follows); every handler a source or route names is
    defined in the file or built in."""
    settings = load_settings(path)
    assert settings.sources or settings.snapshot.url
    for src in settings.sources:
        for name in (src.handler, *(route.handler for route in src.routes)):
            assert name in settings.handlers or name in ("stdout", "jsonl", "sqs"), name


# --- S3 URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("s3://bucket/prefix/", ("bucket", "prefix/")),
    ("s3://bucket/a/b/c/", ("bucket", "a/b/c/")),
    ("s3://bucket/a/b", ("bucket", "a/b")),
    ("s3://bucket/", ("bucket", "")),
    ("s3://bucket", ("bucket", "")),
    ("s3://my.bucket-1/topic/0/", ("my.bucket-1", "topic/0/")),
])
def test_parse_s3_url_accepts_s3_urls(url: str, expected: tuple[str, str]) -> None:
    """``s3://BUCKET/PREFIX`` splits into bucket and prefix (no leading slash, trailing slash kept)."""
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize("url", [
    "http://bucket/prefix/",
    "https://bucket.s3.amazonaws.com/prefix/",
    "s3a://bucket/prefix/",
    "file:///tmp/x",
    "bucket/prefix/",
    "/bucket/prefix/",
    "s3:///prefix/",
    "s3:bucket/prefix",
    "",
])
def test_parse_s3_url_rejects_other_urls(url: str) -> None:
    """Anything but ``s3://BUCKET/...`` is rejected with a message quoting the URL."""
    with pytest.raises(ValueError, match="expected s3://BUCKET/PREFIX") as info:
        parse_s3_url(url)
    assert repr(url) in str(info.value)


@pytest.mark.parametrize("url", ["s3://bucket/reports?2024/", "s3://bucket/topic#1/"])
def test_parse_s3_url_never_silently_changes_prefix(url: str) -> None:
    """``?`` and ``#`` are legal in S3 keys. A URL containing them must either keep them in the prefix
    or be rejected; it must not silently consume a different (shorter, wider) prefix."""
    try:
        bucket, prefix = parse_s3_url(url)
    except ValueError:
        return
    assert bucket == "bucket"
    assert f"s3://{bucket}/{prefix}" == url


def test_source_properties_follow_url() -> None:
    """A source's ``bucket`` and ``prefix`` come from its URL."""
    src = SourceSettings(url="s3://data-lake/events/eu/")
    assert (src.bucket, src.prefix) == ("data-lake", "events/eu/")


# --- endpoint -----------------------------------------------------------------------------------------


def test_resolved_endpoint_falls_back_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``endpoint_url`` the endpoint is AWS_ENDPOINT_URL; without either it is None (AWS)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-env:9000")
    assert S3Settings().resolved_endpoint() == "http://from-env:9000"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert S3Settings().resolved_endpoint() is None


def test_resolved_endpoint_setting_wins_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit ``endpoint_url`` beats AWS_ENDPOINT_URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-env:9000")
    s3 = build_settings({"s3": {"endpoint_url": "http://from-config:9000"}}).s3
    assert s3.resolved_endpoint() == "http://from-config:9000"


def test_resolved_endpoint_empty_env_means_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty AWS_ENDPOINT_URL counts as unset."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "")
    assert S3Settings().resolved_endpoint() is None


def test_service_endpoint_overrides_the_general_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """``AWS_ENDPOINT_URL_S3`` beats ``--endpoint-url`` and ``AWS_ENDPOINT_URL`` for S3 only, as botocore
    does; without it the setting wins over ``AWS_ENDPOINT_URL``; with nothing set, AWS itself."""
    s3 = build_settings({"s3": {"endpoint_url": "http://given:1"}}).s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://general:2")
    assert s3.resolved_endpoint() == "http://given:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:3")
    assert s3.resolved_endpoint() == "http://s3-only:3"
    assert s3.resolved_endpoint("sqs") == "http://given:1"
    assert build_settings({}).s3.resolved_endpoint("sqs") == "http://general:2"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert build_settings({}).s3.resolved_endpoint() is None


def test_command_line_beats_environment_beats_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A flag (``--metrics-port``, ``--lease-duration``) wins over an ``S3STREAM_…`` variable, which
    wins over the file; file settings the flags do not name are kept."""
    from s3stream.cli.consume import consume_settings

    cfg = tmp_path / "c.toml"
    cfg.write_text("[metrics]\nport = 1111\n[consumer]\nconcurrency = 3\n"
                   "[consumer.checkpoint]\ninterval = 0.5\n")
    monkeypatch.setenv("S3STREAM_METRICS__PORT", "2222")
    assert consume_settings("s3://b/t/", config=str(cfg)).metrics.port == 2222
    settings = consume_settings("s3://b/t/", config=str(cfg), metrics_port=3333, lease_duration=9.0)
    assert settings.metrics.port == 3333
    assert (settings.consumer.leases.enabled, settings.consumer.leases.duration) == (True, 9.0)
    assert (settings.consumer.concurrency, settings.consumer.checkpoint.interval) == (3, 0.5)
