"""Commands for trying s3stream out and for people at a terminal: ``dev-server``, ``demo``, ``tail``,
``chat``."""

from __future__ import annotations

import signal
from typing import Literal

import click

from s3stream.cli import live, preflight
from s3stream.cli.app import fail, quiet_logs, run_async, s3_options, serve
from s3stream.cli.common import command_settings
from s3stream.errors import ConfigError, S3StreamError


@click.command("dev-server")
@click.option("--port", type=int, default=5000, show_default=True)
def dev_server(port: int) -> None:
    """Run an embedded S3 endpoint (moto) on 127.0.0.1 until interrupted."""
    from s3stream.cli.devserver import start_moto

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


@click.command()
def demo() -> None:
    """The AWS CLI walkthrough end to end on an embedded S3: publish, consume, update live, stop cleanly."""
    from s3stream.cli.demo import run_demo

    run_async(run_demo)


@click.command()
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


@click.command()
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
