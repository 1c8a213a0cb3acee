"""The ``s3stream`` command. Signals are handled here and only here."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import click

from s3stream import logs
from s3stream.config import Settings, build_settings, load_settings, read_toml
from s3stream.consumer import Consumer
from s3stream.errors import ConfigError, HandlerError, S3StreamError, StoreError

_USAGE_ERRORS = (ConfigError, HandlerError, StoreError)


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


def fail(exc: S3StreamError) -> None:
    """Print ``exc`` as one line and exit: 2 for config, handler and store errors, else 1."""
    click.echo(f"s3stream: error: {exc}", err=True)
    sys.exit(2 if isinstance(exc, _USAGE_ERRORS) else 1)


async def serve(consumer: Consumer) -> None:
    """Run a consumer until SIGTERM or SIGINT; a second SIGINT exits at once."""
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_sigint() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            os._exit(130)
        consumer.stop()

    loop.add_signal_handler(signal.SIGTERM, consumer.stop)
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        await consumer.run()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default=lambda: os.environ.get("S3STREAM_LOG_LEVEL", "info"),
              show_default="info", help="debug, info, warning or error.")
def main(log_level: str) -> None:
    """s3stream: an S3 bucket as a durable message broker."""
    logs.configure(log_level)


def consume_settings(url: str, *, config: str | None, **opts: Any) -> Settings:
    """The settings of ``s3stream consume``: the config file, then the command-line options."""
    data = read_toml(config) if config else {}
    consumer = data.setdefault("consumer", {})
    for name in ("group", "concurrency", "poll_interval", "settle_window"):
        if opts.get(name) is not None:
            consumer[name] = opts[name]
    if opts.get("start_from") is not None:
        consumer["start_from"] = opts["start_from"]
    if opts.get("checkpoint_dir") is not None:
        consumer.setdefault("checkpoint", {}).update(store="file", directory=opts["checkpoint_dir"])
    if opts.get("endpoint_url") is not None:
        data.setdefault("s3", {})["endpoint_url"] = opts["endpoint_url"]
    data["sources"] = [{"url": url, "handler": opts.get("handler") or "stdout"}]
    return build_settings(data)


@main.command()
@click.argument("url")
@click.option("--group", help="Consumer group (its own checkpoint). [default: default]")
@click.option("--handler", help="Handler: an entry-point name (stdout, jsonl) or module:attr.")
@click.option("--from", "start_from", type=click.Choice(["earliest", "latest"]),
              help="Where a group without a checkpoint starts. [default: earliest]")
@click.option("--settle-window", type=float, help="Seconds a version may become visible late.")
@click.option("--poll-interval", type=float, help="Seconds between polls while busy.")
@click.option("--concurrency", type=int, help="Workers fetching and handling in parallel.")
@click.option("--endpoint-url", help="S3 endpoint (falls back to AWS_ENDPOINT_URL).")
@click.option("--checkpoint-dir", help="Keep checkpoints in this local folder instead of S3.")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="TOML config file.")
def consume(url: str, config: str | None, **opts: Any) -> None:
    """Stream every version under s3://BUCKET/PREFIX to a handler until SIGTERM/SIGINT."""
    try:
        settings = consume_settings(url, config=config, **opts)
        consumer = Consumer(settings)
    except S3StreamError as exc:
        fail(exc)
    run_async(lambda: serve(consumer))


@main.command()
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="TOML config file.")
def run(config: str) -> None:
    """Run the consumer described by a config file (several sources and handlers)."""
    try:
        consumer = Consumer(load_settings(config))
    except S3StreamError as exc:
        fail(exc)
    run_async(lambda: serve(consumer))


@main.command("dev-server")
@click.option("--port", type=int, default=5000, show_default=True)
def dev_server(port: int) -> None:
    """Run an embedded S3 endpoint (moto) on 127.0.0.1 until interrupted."""
    from s3stream.devserver import start_moto

    try:
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
    """Seed 000 end to end on an embedded S3: publish, consume, update live, stop cleanly."""
    from s3stream.demo import run_demo

    run_async(run_demo)
