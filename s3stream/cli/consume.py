"""``s3stream consume`` (one prefix or topic from the command line) and ``s3stream run`` (a config file)."""

from __future__ import annotations

import sys
from typing import Any

import click

from s3stream.cli import members, preflight
from s3stream.cli.app import F, fail, run_async, s3_options, serve
from s3stream.cli.runopts import apply_handler_options, handler_options, serve_with_status
from s3stream.config import Settings, build_settings, read_toml
from s3stream.errors import S3StreamError
from s3stream.pipeline.consumer import Consumer


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


@click.command()
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
@members.processes_option
@s3_options
def consume(url: str, config: str | None, processes: int | None, **opts: Any) -> None:
    """Stream every version under s3://BUCKET/PREFIX to a handler until SIGTERM/SIGINT.

    On a terminal, a status line goes to stderr every 10 s (S3STREAM_STATUS_INTERVAL)."""
    try:
        settings = consume_settings(url, config=config, **opts)
        consumer = Consumer(settings)
        preflight.check_consumer(settings)
    except S3StreamError as exc:
        fail(exc)
    serve_or_supervise(consumer, processes)


def serve_or_supervise(consumer: Consumer, processes: int | None) -> None:
    """Run ``consumer`` here, or with ``--processes N`` as N member processes of its group."""
    if processes is None:
        run_async(lambda: serve_with_status(consumer, serve))
        return
    try:
        members.check(processes, consumer.settings)
    except S3StreamError as exc:
        fail(exc)
    sys.exit(members.supervise(members.child_commands(processes, consumer.settings, sys.argv[1:])))


@click.command()
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--metrics-port", type=int, help="Serve /metrics, /healthz, /readyz on this port.")
@click.option("--endpoint-url", help="S3 endpoint (overrides [s3] endpoint_url; else AWS_ENDPOINT_URL).")
@handler_options
@lease_options
@members.processes_option
def run(config: str, metrics_port: int | None, endpoint_url: str | None, processes: int | None,
        **opts: Any) -> None:
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
    serve_or_supervise(consumer, processes)
