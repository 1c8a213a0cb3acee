"""The root ``s3stream`` group and what every command shares: running a coroutine, signals (handled here and
only here), one-line failures with the exit codes, ``--endpoint-url``/``--config``.

The commands themselves live in the modules beside this one; :mod:`s3stream.cli` assembles them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import click

from s3stream.cli import options as cliopts
from s3stream.errors import ConfigError, EndpointUnreachable, HandlerError, S3StreamError, StoreError
from s3stream.layouts.topics import TopicExists
from s3stream.pipeline.consumer import Consumer
from s3stream.service import logs

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
    freezing = asyncio.create_task(freeze_heap_when_started(consumer))
    try:
        with stop_on_signals(consumer.stop):
            await consumer.run()
    finally:
        freezing.cancel()


async def freeze_heap_when_started(consumer: Consumer) -> None:
    """Once the consumer has started, leave what it has built (modules, the S3 client's service
    models: some 180,000 objects) out of the garbage collector's full passes. Each of those took
    about 100 ms while messages flowed, and showed in the tail of publish-to-handler latency. The
    daemon owns its process, so it decides this; a library leaves it to the application."""
    await consumer.started.wait()
    gc.collect()
    gc.freeze()


@click.group(cls=cliopts.MainGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=cliopts.EXIT_CODES)
@click.option("--log-level", type=cliopts.LogLevel(), envvar="S3STREAM_LOG_LEVEL", default="info",
              help=cliopts.LEVEL_HELP + " Also accepted after the command.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=cliopts.show_version,
              help="Print s3stream's version and exit.")
def main(log_level: str) -> None:
    """s3stream: an S3 bucket as a durable message broker."""
    logs.configure(log_level)


def s3_options(func: F) -> F:
    """``--endpoint-url`` and ``--config``, shared by every command that talks to S3."""
    func = click.option("--config", "config", type=click.Path(dir_okay=False),
                        help="TOML config file ([s3] and the command's own sections).")(func)
    return click.option("--endpoint-url", help="S3 endpoint (falls back to AWS_ENDPOINT_URL).")(func)


def quiet_logs() -> None:
    """Interactive commands log warnings and errors only, unless a log level was asked for."""
    if not cliopts.level_chosen(click.get_current_context()):
        logs.configure("warning")
