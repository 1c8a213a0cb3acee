"""``s3stream bucket create|decommission|versioning`` (``bucket lifecycle``: :mod:`s3stream.cli.snapshot`)."""

from __future__ import annotations

import click

from s3stream.cli.app import run_async, s3_options
from s3stream.cli.common import command_settings
from s3stream.cli.jsonout import emit
from s3stream.cli.progress import reporter
from s3stream.ops import admin


@click.group()
def bucket() -> None:
    """Create, version and decommission buckets."""


@bucket.command("create")
@click.argument("name")
@click.option("--versioning", is_flag=True, help="Turn on versioning (versions-layout topics need it).")
@s3_options
def bucket_create(name: str, versioning: bool, endpoint_url: str | None, config: str | None) -> None:
    """Create bucket NAME (a directory bucket for NAME--AZID--x-s3).

    A bucket NAME that is already yours is left as it is (exit 0; --versioning still turns versioning
    on); one that another account owns is an error (exit 2)."""

    async def go() -> None:
        click.echo(await admin.create_bucket(command_settings(config, endpoint_url), name,
                                             versioning=versioning))

    run_async(go)


@bucket.command("versioning")
@click.argument("name")
@click.option("--enable", "change", flag_value="Enabled", help="Turn versioning on.")
@click.option("--suspend", "change", flag_value="Suspended",
              help="Suspend versioning (versions kept so far stay; new writes replace the null version).")
@click.option("--json", "as_json", is_flag=True, help='{"bucket": NAME, "versioning": STATUS} on stdout.')
@s3_options
def bucket_versioning(name: str, change: str | None, as_json: bool, endpoint_url: str | None,
                      config: str | None) -> None:
    """Show bucket NAME's versioning status (Enabled, Suspended or Off), or change it."""

    async def go() -> None:
        status = await admin.versioning(command_settings(config, endpoint_url), name, change=change)
        if as_json:
            emit({"bucket": name, "versioning": status})
        else:
            click.echo(f"bucket {name}: versioning {status}")

    run_async(go)


@bucket.command("decommission")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Confirm: everything in the bucket is deleted for good.")
@s3_options
def bucket_decommission(name: str, yes: bool, endpoint_url: str | None, config: str | None) -> None:
    """Delete every version, delete marker and object in bucket NAME, then the bucket.

    Progress goes to stderr: a bar on a terminal, else a line every 5 s (S3STREAM_PROGRESS_INTERVAL)."""

    async def go() -> None:
        with reporter(f"decommissioning {name}", unit="deleted") as progress:
            done = await admin.decommission(command_settings(config, endpoint_url), name, yes=yes,
                                            progress=progress)
        click.echo(done)

    run_async(go)
