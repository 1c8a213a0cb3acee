"""The ``s3stream`` command. Signals are handled here and only here."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Literal, TypeVar

import click

from s3stream import cliopts, live, logs, preflight
from s3stream.commands import command_settings
from s3stream.config import Settings, build_settings, read_toml
from s3stream.consumer import Consumer
from s3stream.errors import ConfigError, EndpointUnreachable, HandlerError, S3StreamError, StoreError
from s3stream.runopts import apply_handler_options, handler_options, serve_with_status
from s3stream.topics import TopicExists

_USAGE_ERRORS = (ConfigError, HandlerError, StoreError, TopicExists)
F = TypeVar("F", bound=Callable[..., Any])


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop when installed; S3StreamError becomes one line on stderr."""
    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(main())
    except S3StreamError as exc:
        fail(exc)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        release_closed_stdout()


def release_closed_stdout() -> None:
    """When the reader of standard output went away (``s3stream consume … | head -3``), point it at
    /dev/null: the run already stopped cleanly, and what is left in Python's buffer must not turn the
    interpreter's last flush into a BrokenPipeError message and exit code 120."""
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


def fail(exc: S3StreamError) -> None:
    """Print ``exc`` as one line and exit: 3 when the endpoint cannot be reached, 2 for config, handler
    and other store errors, else 1 (``cliopts.EXIT_CODES``)."""
    click.echo(f"s3stream: error: {exc}", err=True)
    if isinstance(exc, EndpointUnreachable):
        sys.exit(3)
    sys.exit(2 if isinstance(exc, _USAGE_ERRORS) else 1)


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT call ``stop`` (a graceful shutdown); a second SIGINT
    exits at once with 130. The one place signals are handled."""
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            os._exit(130)
        stop()

    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)


async def serve(consumer: Consumer) -> None:
    """Run a consumer until SIGTERM or SIGINT; a second SIGINT exits at once."""
    with stop_on_signals(consumer.stop):
        await consumer.run()


@click.group(cls=cliopts.MainGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=cliopts.EXIT_CODES)
@click.option("--log-level", type=cliopts.LogLevel(), envvar="S3STREAM_LOG_LEVEL", default="info",
              help=cliopts.LEVEL_HELP + " Also accepted after the command.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=cliopts.show_version,
              help="Print s3stream's version and exit.")
def main(log_level: str) -> None:
    """s3stream: an S3 bucket as a durable message broker."""
    logs.configure(log_level)


def consume_settings(url: str, *, config: str | None, **opts: Any) -> Settings:
    """The settings of ``s3stream consume``: the config file, then the command-line options."""
    data = read_toml(config) if config else {}
    cli: dict[str, Any] = {}
    consumer = cli.setdefault("consumer", {})
    for name in ("group", "concurrency", "poll_interval", "settle_window"):
        if opts.get(name) is not None:
            consumer[name] = opts[name]
    if opts.get("start_from") is not None:
        consumer["start_from"] = opts["start_from"]
    if opts.get("checkpoint_dir") is not None:
        consumer.setdefault("checkpoint", {}).update(store="file", directory=opts["checkpoint_dir"])
    if opts.get("endpoint_url") is not None:
        cli.setdefault("s3", {})["endpoint_url"] = opts["endpoint_url"]
    if opts.get("metrics_port") is not None:
        cli.setdefault("metrics", {})["port"] = opts["metrics_port"]
    apply_lease_options(cli, opts)
    apply_handler_options(cli, opts)
    data["sources"] = [{"url": url, "handler": opts.get("handler") or "stdout"}]
    return build_settings(data, cli=cli)


def lease_options(func: F) -> F:
    """``--lease-duration`` (joins the group's leases) and ``--member-id``."""
    func = click.option("--member-id",
                        help="This member's name in the group. [default: <host>-<pid>-<random>]")(func)
    return click.option("--lease-duration", type=float, metavar="SECONDS",
                        help="Share the topic with the group's other members, holding shard leases "
                             "this long between renewals ([consumer.leases]).")(func)


def apply_lease_options(data: dict[str, Any], opts: dict[str, Any]) -> None:
    leases = data.setdefault("consumer", {}).setdefault("leases", {})
    if opts.get("lease_duration") is not None:
        leases.update(enabled=True, duration=opts["lease_duration"])
    if opts.get("member_id") is not None:
        leases["member_id"] = opts["member_id"]


def s3_options(func: F) -> F:
    """``--endpoint-url`` and ``--config``, shared by every command that talks to S3."""
    func = click.option("--config", "config", type=click.Path(dir_okay=False),
                        help="TOML config file ([s3] and the command's own sections).")(func)
    return click.option("--endpoint-url", help="S3 endpoint (falls back to AWS_ENDPOINT_URL).")(func)


def quiet_logs() -> None:
    """Interactive commands log warnings and errors only, unless a log level was asked for."""
    if not cliopts.level_chosen(click.get_current_context()):
        logs.configure("warning")


@main.command()
@click.argument("url")
@click.option("--group", help="Consumer group (its own checkpoint). [default: default]")
@click.option("--handler", help="Handler: an entry-point name (stdout, jsonl) or module:attr.")
@click.option("--from", "start_from", type=click.Choice(["earliest", "latest"]),
              help="Where a group without a checkpoint starts. [default: earliest]")
@click.option("--settle-window", type=float, help="Seconds a version may become visible late.")
@click.option("--poll-interval", type=float, help="Seconds between polls while busy.")
@click.option("--concurrency", type=int, help="Workers fetching and handling in parallel.")
@click.option("--checkpoint-dir", help="Keep checkpoints in this local folder instead of S3.")
@click.option("--metrics-port", type=int, help="Serve /metrics, /healthz, /readyz on this port.")
@handler_options
@lease_options
@s3_options
def consume(url: str, config: str | None, **opts: Any) -> None:
    """Stream every version under s3://BUCKET/PREFIX to a handler until SIGTERM/SIGINT.

    On a terminal, a status line goes to stderr every 10 s (S3STREAM_STATUS_INTERVAL)."""
    try:
        settings = consume_settings(url, config=config, **opts)
        consumer = Consumer(settings)
        preflight.check_consumer(settings)
    except S3StreamError as exc:
        fail(exc)
    run_async(lambda: serve_with_status(consumer, serve))


@main.command()
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--metrics-port", type=int, help="Serve /metrics, /healthz, /readyz on this port.")
@click.option("--endpoint-url", help="S3 endpoint (overrides [s3] endpoint_url; else AWS_ENDPOINT_URL).")
@handler_options
@lease_options
def run(config: str, metrics_port: int | None, endpoint_url: str | None, **opts: Any) -> None:
    """Run the consumer described by a config file (several sources and handlers).

    On a terminal, a status line goes to stderr every 10 s (S3STREAM_STATUS_INTERVAL)."""
    try:
        data = read_toml(config)
        cli: dict[str, Any] = {"metrics": {"port": metrics_port}} if metrics_port is not None else {}
        if endpoint_url is not None:
            cli["s3"] = {"endpoint_url": endpoint_url}
        apply_lease_options(cli, opts)
        apply_handler_options(cli, opts)
        consumer = Consumer(build_settings(data, cli=cli))
        preflight.check_consumer(consumer.settings)
    except S3StreamError as exc:
        fail(exc)
    run_async(lambda: serve_with_status(consumer, serve))


@main.command("dev-server")
@click.option("--port", type=int, default=5000, show_default=True)
def dev_server(port: int) -> None:
    """Run an embedded S3 endpoint (moto) on 127.0.0.1 until interrupted."""
    from s3stream.devserver import start_moto

    try:
        preflight.check_port("127.0.0.1", port, "dev-server --port")
        server, endpoint = start_moto(port)
    except (S3StreamError, OSError) as exc:
        fail(exc if isinstance(exc, S3StreamError) else ConfigError(f"cannot listen on port {port}: {exc}"))
    click.echo(f"S3 endpoint: {endpoint}\n  export AWS_ENDPOINT_URL={endpoint} "
               "AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing")

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@main.command()
def demo() -> None:
    """The AWS CLI walkthrough end to end on an embedded S3: publish, consume, update live, stop cleanly."""
    from s3stream.demo import run_demo

    run_async(run_demo)


# --- live commands ---------------------------------------------------------------------------------


@main.command()
@click.argument("url")
@click.option("--from", "start_from", type=click.Choice(["earliest", "latest"]), default="latest",
              show_default=True, help="Show the existing messages too (earliest), or only new ones.")
@click.option("--json", "as_json", is_flag=True, help="s3stream's JSON lines instead of the bodies.")
@click.option("--poll-interval", type=float, default=0.5, show_default=True, help="Seconds between polls.")
@click.option("--concurrency", type=int, default=1, show_default=True,
              help="Messages handled at once (1 keeps the order they are listed in).")
@s3_options
def tail(url: str, start_from: str, as_json: bool, poll_interval: float, concurrency: int,
         endpoint_url: str | None, config: str | None) -> None:
    """Print messages of s3://BUCKET/PREFIX_OR_TOPIC as they arrive, until SIGINT/SIGTERM."""
    quiet_logs()
    begin: Literal["earliest", "latest"] = "earliest" if start_from == "earliest" else "latest"
    run_async(lambda: live.tail(
        command_settings(config, endpoint_url, **live.live_config(
            url, start_from=begin, poll_interval=poll_interval, concurrency=concurrency)),
        as_json=as_json, serve=serve))


@main.command()
@click.argument("url")
@click.option("--user", envvar="S3CHAT_USER", help="Your name. [default: $S3CHAT_USER, $USER, login name]")
@s3_options
def chat(url: str, user: str | None, endpoint_url: str | None, config: str | None) -> None:
    """Chat in the room s3://BUCKET/ROOM (created if missing): stdin lines out, everyone's in; /exit quits."""
    quiet_logs()
    name = user or live.default_user()
    run_async(lambda: live.chat(
        command_settings(config, endpoint_url, sections=("s3", "producer"), **live.live_config(url)),
        url, user=name, serve=serve))


@main.command()
@click.option("--bucket", required=True, help="The bucket to benchmark (a directory bucket: log layout).")
@click.option("--region", help="The bucket's region. [default: us-east-1, or [s3] region]")
@click.option("--messages", type=click.IntRange(1, 1_000_000), default=1000, show_default=True,
              help="Messages per scenario (segments: 100 times as many).")
@click.option("--scenario", "scenarios", multiple=True,
              type=click.Choice(["produce", "consume", "segments", "latency", "idle"]),
              help="Run only these (repeatable). [default: all but idle]")
@s3_options
def bench(bucket: str, region: str | None, messages: int, scenarios: tuple[str, ...],
          endpoint_url: str | None, config: str | None) -> None:
    """Benchmark s3stream on a real bucket under a fresh bench-<time>/ prefix, removed afterwards."""
    from s3stream.bench import DEFAULT_SCENARIOS, command

    quiet_logs()
    extra = {"s3": {"region": region}} if region else {}
    run_async(lambda: command(command_settings(config, endpoint_url, sections=("s3", "consumer"), **extra),
                              bucket, messages=messages, scenarios=scenarios or DEFAULT_SCENARIOS,
                              echo=click.echo))


from s3stream import bridgecli as _bridgecli  # noqa: E402, F401  (registers `bridge` on `main`)
from s3stream import bucketcli as _bucketcli  # noqa: E402, F401  (registers `bucket` on `main`)
from s3stream import doctorcli as _doctorcli  # noqa: E402, F401  (registers `doctor` on `main`)
from s3stream import groupcli as _groupcli  # noqa: E402, F401  (registers `group` on `main`)
from s3stream import messagecli as _messagecli  # noqa: E402, F401  (`publish`, `get`, `history`)
from s3stream import notifycli as _notifycli  # noqa: E402, F401  (registers `notifications` on `main`)
from s3stream import opscli as _opscli  # noqa: E402  (registers `config` and `dlq` on `main`)
from s3stream import snapshotcli as _snapshotcli  # noqa: E402, F401  (`snapshot`, `bucket lifecycle`)
from s3stream import topiccli as _topiccli  # noqa: E402, F401  (registers `topic` on `main`)

__all__ = ["_opscli", "main"]
