"""``s3stream group seek`` (move a group's position in a topic) and ``group export`` (save it to a file).

The work is in :mod:`s3stream.groups.seek` (I/O) and :mod:`s3stream.groups.seekpos` (the positions); this
is the
command line: options, the refusal while members hold the shards, and the output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import orjson

from s3stream.cli.app import run_async, s3_options
from s3stream.cli.common import command_settings
from s3stream.config import Settings
from s3stream.errors import ConfigError
from s3stream.groups.seek import SeekPlan, export_document, plan_seek, read_positions, write_positions
from s3stream.groups.seekpos import Target, parse_target, position_text
from s3stream.message import iso
from s3stream.s3.store import open_store

TO_HELP = ("earliest (everything still stored again), latest (only what is written from now on), an "
           "ISO 8601 time with a timezone (messages written at or after it again, earlier ones skipped), "
           "or a position file saved by `group export` or `group seek --save`.")


def _settings(config: str | None, endpoint_url: str | None, group: str | None) -> Settings:
    extra: dict[str, Any] = {"consumer": {"group": group}} if group else {}
    return command_settings(config, endpoint_url, sections=("s3", "consumer"), **extra)


@click.command("seek")
@click.argument("url")
@click.option("--group", help="The consumer group. [default: [consumer] group, else default]")
@click.option("--to", "to", required=True, help=TO_HELP)
@click.option("--dry-run", is_flag=True,
              help="Show each shard's move and counts; write nothing (not even --save).")
@click.option("--force", is_flag=True,
              help="Seek even while members hold shards: each holder keeps its own position until its next "
                   "commit, which fails on the seek's fence; it gives the shard up, and the shard is taken "
                   "again under a new lease generation and resumes from the new position.")
@click.option("--save", type=click.Path(dir_okay=False),
              help="First save the current positions to this file (a later --to FILE goes back).")
@click.option("--checkpoint-dir", help="The group keeps checkpoints in this local folder (consume "
                                       "--checkpoint-dir); stop its consumer first: files have no fence.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text lines.")
@s3_options
def group_seek(url: str, group: str | None, to: str, dry_run: bool, force: bool, save: str | None,
               checkpoint_dir: str | None, as_json: bool, endpoint_url: str | None,
               config: str | None) -> None:
    """Move group GROUP's position in every shard of s3://BUCKET/TOPIC, to replay or skip messages.

    Refused while a member holds a live lease on one of the topic's shards, unless --force."""
    run_async(lambda: seek(_settings(config, endpoint_url, group), url, parse_target(to), dry_run=dry_run,
                           force=force, save=Path(save) if save else None, checkpoint_dir=checkpoint_dir,
                           as_json=as_json))


@click.command("export")
@click.argument("url")
@click.option("--group", help="The consumer group. [default: [consumer] group, else default]")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write to this file. [default: stdout]")
@click.option("--checkpoint-dir", help="The group keeps checkpoints in this local folder.")
@s3_options
def group_export(url: str, group: str | None, output: str | None, checkpoint_dir: str | None,
                 endpoint_url: str | None, config: str | None) -> None:
    """Save group GROUP's position in each shard of s3://BUCKET/TOPIC as JSON (for `group seek --to FILE`)."""
    run_async(lambda: export(_settings(config, endpoint_url, group), url, output, checkpoint_dir))


async def export(settings: Settings, url: str, output: str | None, checkpoint_dir: str | None) -> None:
    async with open_store(settings.s3, max_connections=16) as store:
        plan = await read_positions(store, settings, url, checkpoint_dir)
    data = orjson.dumps(export_document(plan), option=orjson.OPT_INDENT_2)
    if output is None:
        click.echo(data.decode())
    else:
        write_file(Path(output), data)


async def seek(settings: Settings, url: str, target: Target, *, dry_run: bool, force: bool,
               save: Path | None, checkpoint_dir: str | None, as_json: bool) -> None:
    """Plan the seek, refuse it while members hold shards (unless ``force``), save, write and report."""
    async with open_store(settings.s3, max_connections=16) as store:
        plan = await read_positions(store, settings, url, checkpoint_dir)
        if plan.owners and not (force or dry_run):
            raise ConfigError(f"group {plan.group!r} has members holding shards of {_url(plan)}: "
                              f"{_owners(plan)}; stop them, or pass --force")
        await plan_seek(store, plan, target, settle_window=settings.consumer.settle_window)
        if not dry_run:
            if save is not None:
                write_file(save, orjson.dumps(export_document(plan), option=orjson.OPT_INDENT_2))
            await write_positions(plan, force=force)
    if plan.owners and not dry_run:
        click.echo(f"s3stream: warning: seek forced while {_owners(plan)} held shards: each keeps its own "
                   "position until its next commit, which the seek fences; the shard is then taken again and "
                   "resumes from the new position", err=True)
    if plan.owners and dry_run:
        click.echo(f"s3stream: note: {_owners(plan)} hold shards now: without --force the seek is refused",
                   err=True)
    if as_json:
        click.echo(orjson.dumps(to_json(plan, dry_run), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in render(plan, dry_run):
            click.echo(line)


def write_file(path: Path, data: bytes) -> None:
    """A small local file, written at once (the command does nothing else meanwhile)."""
    try:
        path.write_bytes(data + b"\n")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None


def _url(plan: SeekPlan) -> str:
    return f"s3://{plan.topic.bucket}/{plan.topic.name}"


def _owners(plan: SeekPlan) -> str:
    width = plan.topic.width
    parts = []
    for owner, idx in sorted(plan.owners.items()):
        names = ", ".join(f"{i:0{width}x}" for i in idx)
        parts.append(f"{owner} (shard{'s' if len(idx) > 1 else ''} {names})")
    return ", ".join(parts)


def render(plan: SeekPlan, dry_run: bool) -> list[str]:
    """The seek as lines: one per shard, then the totals."""
    topic = plan.topic
    assert plan.target is not None
    lines = [f"group {plan.group} on {_url(plan)} ({topic.layout}, {topic.shards} shard"
             f"{'s' if topic.shards > 1 else ''}): seek to {plan.target.describe()}"
             + (" (dry run: nothing written)" if dry_run else "")]
    for s in plan.shards:
        held = f", held by {s.owner}" if s.owner else ""
        lines.append(f"shard {s.index:0{topic.width}x} {s.prefix}: {position_text(s.current)} -> "
                     f"{position_text(s.new)}, replay {s.change.replay}, skip {s.change.skip}, "
                     f"deliver {s.change.deliver}{held}")
    replay = sum(s.change.replay for s in plan.shards)
    skip = sum(s.change.skip for s in plan.shards)
    deliver = sum(s.change.deliver for s in plan.shards)
    lines.append(f"total: replay {replay}, skip {skip}, deliver {deliver}")
    return lines


def to_json(plan: SeekPlan, dry_run: bool) -> dict[str, Any]:
    """The seek as one JSON document."""
    topic = plan.topic
    assert plan.target is not None
    return {
        "group": plan.group, "topic": _url(plan), "layout": topic.layout, "to": plan.target.describe(),
        "server_time": iso(plan.now_ms), "dry_run": dry_run,
        "shards": [{
            "index": s.index, "prefix": s.prefix, "current": position_text(s.current),
            "new": position_text(s.new), "replay": s.change.replay, "skip": s.change.skip,
            "deliver": s.change.deliver, "held_by": s.owner, "written": s.written,
        } for s in plan.shards],
        "replay": sum(s.change.replay for s in plan.shards),
        "skip": sum(s.change.skip for s in plan.shards),
        "deliver": sum(s.change.deliver for s in plan.shards),
    }
