"""``s3stream topic create|list|describe|delete``."""

from __future__ import annotations

import click

from s3stream.cli.app import run_async, s3_options
from s3stream.cli.common import command_settings
from s3stream.cli.jsonout import emit
from s3stream.cli.progress import reporter
from s3stream.layouts.topics import DEFAULT_DIR_SECONDS, DIR_SECONDS, Layout, Topic
from s3stream.message import iso
from s3stream.ops import admin, describe

JSON_HELP = "One JSON document on stdout instead of text (times ISO 8601 UTC)."


@click.group()
def topic() -> None:
    """Create, list, describe and delete topics."""


@topic.command("create")
@click.argument("url")
@click.option("--shards", type=int, default=1, show_default=True, help="Shards (prefixes) to spread load.")
@click.option("--layout", type=click.Choice(["versions", "log"]), default="versions", show_default=True,
              help="versions: a PUT per key, each a version; log: a new object per message.")
@click.option("--dir-seconds", type=click.Choice([str(s) for s in DIR_SECONDS]),
              default=str(DEFAULT_DIR_SECONDS), show_default=True,
              help="log layout: how many seconds of messages one directory holds. Consumers list the "
              "open directories whole on every pass, so shorter ones cost fewer pages at high rates.")
@s3_options
def topic_create(url: str, shards: int, layout: str, dir_seconds: str, endpoint_url: str | None,
                 config: str | None) -> None:
    """Create the topic s3://BUCKET/TOPIC (creating it twice is an error)."""
    chosen: Layout = "log" if layout == "log" else "versions"

    async def go() -> None:
        click.echo(await admin.topic_create(command_settings(config, endpoint_url), url, shards=shards,
                                            layout=chosen, dir_seconds=int(dir_seconds)))

    run_async(go)


def topic_json(topic: Topic) -> dict[str, object]:
    """A topic's metadata as JSON."""
    doc: dict[str, object] = {"topic": f"s3://{topic.bucket}/{topic.name}", "name": topic.name,
                              "layout": topic.layout, "shards": topic.shards,
                              "created": iso(topic.created_ms)}
    if topic.layout == "log":
        doc["dir_seconds"] = topic.dir_seconds
    return doc


@topic.command("list")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True,
              help="A JSON array of topics (topic, name, layout, shards, created).")
@s3_options
def topic_list(url: str, as_json: bool, endpoint_url: str | None, config: str | None) -> None:
    """List the topics of s3://BUCKET: name, layout, shards, creation time."""

    async def go() -> None:
        topics = await admin.topic_list(command_settings(config, endpoint_url), url)
        if as_json:
            emit([topic_json(t) for t in topics])
            return
        if not topics:
            click.echo(f"no topics in {url}", err=True)
        for t in topics:
            click.echo(f"{t.name}\t{t.layout}\t{t.shards} shard(s)\tcreated {iso(t.created_ms)}")

    run_async(go)


@topic.command("describe")
@click.argument("url")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@s3_options
def topic_describe(url: str, as_json: bool, endpoint_url: str | None, config: str | None) -> None:
    """Layout, shards, what each shard holds, and each consumer group's position and lag.

    A prefix with neither topic metadata nor objects does not exist: exit 2."""

    async def go() -> None:
        view = await describe.read_topic(command_settings(config, endpoint_url, sections=("s3", "consumer")),
                                         url)
        if as_json:
            emit(describe.to_json(view))
        else:
            for line in describe.render(view.topic, view.stats, view.groups):
                click.echo(line)

    run_async(go)


@topic.command("delete")
@click.argument("url")
@click.option("--data", is_flag=True, help="Also delete the shards' messages and the groups' checkpoints.")
@click.option("--yes", is_flag=True, help="Confirm --data.")
@s3_options
def topic_delete(url: str, data: bool, yes: bool, endpoint_url: str | None, config: str | None) -> None:
    """Delete the topic's metadata (with --data --yes, its messages too, with progress on stderr)."""

    async def go() -> None:
        with reporter(f"deleting {url}", unit="versions") as progress:
            done = await admin.topic_delete(
                command_settings(config, endpoint_url, sections=("s3", "consumer")), url, data=data, yes=yes,
                progress=progress)
        click.echo(done)

    run_async(go)
