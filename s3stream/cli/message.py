"""``s3stream publish``, ``get`` and ``history``: one-shot commands on messages
(:mod:`s3stream.cli.common`)."""

from __future__ import annotations

import click

from s3stream.cli import common as commands
from s3stream.cli.app import run_async, s3_options
from s3stream.cli.common import command_settings
from s3stream.cli.jsonout import emit
from s3stream.cli.progress import reporter


@click.command()
@click.argument("url")
@click.option("--key", help="Message key (versions layout: the object's name in its shard).")
@click.option("--body", help="The message body. [default: standard input]")
@click.option("--lines", is_flag=True, help="One message per non-empty line, published concurrently.")
@click.option("--json", "as_json", is_flag=True,
              help='JSON on stdout: {"key", "version_id", "offset"}; with --lines a summary, '
                   '{"topic", "published", "seconds", "rate_per_s"}.')
@s3_options
def publish(url: str, key: str | None, body: str | None, lines: bool, as_json: bool, endpoint_url: str | None,
            config: str | None) -> None:
    """Publish to s3://BUCKET/TOPIC; prints the stored key and version id (--lines: progress and a
    summary on stderr)."""
    data = body.encode("utf-8") if body is not None else None

    async def go() -> None:
        settings = command_settings(config, endpoint_url, sections=("s3", "producer"))
        if not lines:
            await commands.publish(settings, url, key=key, body=data, lines=False, as_json=as_json)
            return
        with reporter(f"publishing to {url}", unit="messages") as progress:
            summary = await commands.publish(settings, url, key=key, body=data, lines=True, as_json=as_json,
                                             progress=progress)
        if summary is None:
            return
        if as_json:
            emit(summary)
        click.echo(f"published {summary['published']} messages in {summary['seconds']:.2f}s "
                   f"({summary['rate_per_s']:.0f} msg/s)", err=True)

    run_async(go)


@click.command()
@click.argument("url")
@click.option("--version-id", help="This version instead of the latest.")
@click.option("--key", help="Read URL as s3://BUCKET/TOPIC and address this message key in it.")
@s3_options
def get(url: str, version_id: str | None, key: str | None, endpoint_url: str | None,
        config: str | None) -> None:
    """Print the latest (or given) version of s3://BUCKET/KEY, byte for byte."""
    run_async(lambda: commands.get(command_settings(config, endpoint_url), url, version_id=version_id,
                                   key=key))


@click.command()
@click.argument("url")
@click.option("--json", "as_json", is_flag=True,
              help="JSON lines, one per version, as `consume` prints them (times ISO 8601 UTC).")
@click.option("--key", help="Read URL as s3://BUCKET/TOPIC and address this message key in it.")
@s3_options
def history(url: str, as_json: bool, key: str | None, endpoint_url: str | None, config: str | None) -> None:
    """Every version and delete marker of s3://BUCKET/KEY, oldest first: TIME  VERSION_ID  BODY."""
    run_async(lambda: commands.history(command_settings(config, endpoint_url), url, key=key, as_json=as_json))
