"""``s3stream doctor s3://BUCKET/PREFIX``: what the store really guarantees, and whether that is
enough for the configured setup (see :mod:`s3stream.ops.doctor` and :mod:`s3stream.ops.doctorprobes`)."""

from __future__ import annotations

import sys
from typing import get_args

import click
import orjson

from s3stream.cli.app import quiet_logs, run_async, s3_options
from s3stream.cli.common import command_settings
from s3stream.config import Settings
from s3stream.layouts.topics import is_directory_bucket, load_topic
from s3stream.ops.doctor import (
    VERSIONING,
    Layout,
    Result,
    Setup,
    conditional_writes,
    render,
    to_json,
    verdict,
)
from s3stream.ops.doctorprobes import run_probes, write_cache
from s3stream.s3.keys import split_url
from s3stream.s3.store import Store, open_store

HELP = """Probe what the store behind s3://BUCKET/PREFIX really guarantees, and whether that is
enough for the configured setup.

\b
Small objects are written, read and listed under _s3stream/doctor/<random>/ in the bucket and
deleted afterwards (also when a probe fails). Rows: bucket versioning; ListObjectVersions paging
with key and version markers; delete markers listed; If-None-Match put-if-absent refused (412);
If-Match on a stale ETag refused (412); ListObjectsV2 key order and StartAfter; directory-bucket
semantics (S3 Express, names ending --x-s3); the server's clock against this host's. Each row is
yes, no, n.a. or error, with a detail and the s3stream features that rely on it. The
conditional-write verdict is also kept in _s3stream/doctor/conditional-writes.json, which
consumers with leases read at start.

\b
The setup is the layout consumed at PREFIX (--layout, else the topic's metadata, else: log in a
directory bucket, versions in a versioned bucket, objects otherwise) and whether consumer-group
leases are on (--leases, or [consumer.leases] enabled in --config). It needs:
  versions layout  versioning, version-paging
  objects layout   list-order
  log layout       if-none-match
  leases           if-none-match, if-match

\b
Exit status:
  0  every feature the setup needs is there (other rows may still say no)
  1  a needed feature is missing: one line on stderr names it and why it is needed
  2  the probes could not run: bad URL or config, no such bucket, credentials or endpoint
     refused (one line on stderr)
"""


@click.command(help=HELP, short_help="Probe what the store guarantees (versioning, conditional writes…).")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@click.option("--layout", type=click.Choice(get_args(Layout)),
              help="The layout to judge the store for. [default: detected at PREFIX]")
@click.option("--leases", is_flag=True, help="Judge for consumer-group leases. [default: [consumer.leases]]")
@s3_options
def doctor(url: str, as_json: bool, layout: Layout | None, leases: bool, endpoint_url: str | None,
           config: str | None) -> None:
    quiet_logs()
    codes: list[int] = []
    run_async(lambda: diagnose(command_settings(config, endpoint_url, sections=("s3", "consumer")), url,
                               layout=layout, leases=leases, as_json=as_json, codes=codes))
    sys.exit(codes[0] if codes else 0)


async def diagnose(settings: Settings, url: str, *, layout: Layout | None, leases: bool, as_json: bool,
                   codes: list[int]) -> None:
    """Run the probes, print the report, and append the exit status to ``codes``."""
    bucket, prefix = split_url(url)
    # A diagnosis answers quickly: an unreachable endpoint is reported after seconds, not minutes.
    s3 = settings.s3.model_copy(update={"max_attempts": min(settings.s3.max_attempts, 3),
                                        "max_retry_time": min(settings.s3.max_retry_time, 15.0)})
    async with open_store(s3, max_connections=8) as store:
        await store.check_bucket(bucket)
        results = await run_probes(store, bucket)
        setup = Setup(layout or await detect_layout(store, bucket, prefix, results),
                      leases or settings.consumer.leases.enabled)
        await write_cache(store, bucket, conditional_writes(results))
    judged = verdict(results, setup)
    if as_json:
        click.echo(orjson.dumps(to_json(bucket, results, setup, judged), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in render(results, setup):
            click.echo(line)
    if judged.exit_code == 0:
        if not as_json:
            click.echo(f"ok: {judged.line}")
    else:
        click.echo(f"s3stream: doctor: {judged.line}", err=True)
    codes.append(judged.exit_code)


async def detect_layout(store: Store, bucket: str, prefix: str, results: list[Result]) -> Layout:
    """The layout a consumer of ``prefix`` would use: the topic's, else log in a directory bucket,
    versions where versioning is on, objects otherwise."""
    topic = await load_topic(store, bucket, prefix) if prefix.strip("/") else None
    if topic is not None:
        return topic.layout
    if is_directory_bucket(bucket):
        return "log"
    versioned = any(r.feature == VERSIONING and r.outcome == "yes" for r in results)
    return "versions" if versioned else "objects"
