"""``s3stream group describe`` (the reading is :mod:`s3stream.groups.view`), and the ``group`` command
that ``group seek`` and ``group export`` join."""

from __future__ import annotations

from typing import Any

import click
import orjson

from s3stream.cli.app import run_async, s3_options
from s3stream.cli.common import command_settings
from s3stream.config import Settings
from s3stream.groups.view import GroupView, LeaseInfo, read_group
from s3stream.message import iso


@click.group("group")
def group_cli() -> None:
    """Inspect consumer groups (members sharing a topic by leases) and move their positions."""


@group_cli.command("describe")
@click.argument("url")
@click.option("--group", help="The consumer group. [default: [consumer] group, else default]")
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text lines.")
@s3_options
def group_describe(url: str, group: str | None, as_json: bool, endpoint_url: str | None,
                   config: str | None) -> None:
    """Members, shard leases (owner, generation) and per-shard lag of a group on s3://BUCKET/TOPIC.

    A topic that does not exist (neither metadata nor objects) is an error, exit 2; a group that has
    no members, leases or checkpoints yet is described as it would start: everything unconsumed."""
    extra: dict[str, Any] = {"consumer": {"group": group}} if group else {}
    run_async(lambda: describe_group(
        command_settings(config, endpoint_url, sections=("s3", "consumer"), **extra), url, as_json=as_json))


async def describe_group(settings: Settings, url: str, *, as_json: bool = False) -> None:
    """Print the group's description (see the module docstring)."""
    view = await read_group(settings, url)
    if as_json:
        click.echo(orjson.dumps(to_json(view), option=orjson.OPT_INDENT_2).decode())
    else:
        for line in render(view):
            click.echo(line)


def _lease_text(lease: LeaseInfo) -> str:
    if lease.state == "owned":
        return f"owner {lease.owner}"
    if lease.state == "expired":
        return f"expired (was {lease.owner})"
    return "free"


def render(view: GroupView) -> list[str]:
    """The description as lines of ``name: value``."""
    topic = view.topic
    live = sum(1 for m in view.members if m.live)
    lines = [
        f"group: {view.group}",
        f"topic: s3://{topic.bucket}/{topic.name}",
        f"layout: {topic.layout}",
        f"shards: {topic.shards}",
        f"members: {len(view.members)} ({live} live)" if view.members else "members: none",
    ]
    for m in view.members:
        held = f"{len(m.shards)} shard" + ("" if len(m.shards) == 1 else "s")
        lines.append(f"member {m.member}: {'live' if m.live else 'expired'}, host {m.host or '-'}, "
                     f"pid {m.pid if m.pid is not None else '-'}, renewed {m.age_s}s ago, holds {held}")
    for stats, lease in zip(view.stats, view.leases, strict=True):
        pos = stats.groups[view.group]
        committed = f"watermark {iso(pos.checkpoint.watermark_ms)}" if pos.checkpoint else "no checkpoint"
        lines.append(f"shard {stats.index:0{topic.width}x} {stats.prefix}: {_lease_text(lease)}, "
                     f"generation {lease.generation}, {committed}, unconsumed {pos.unconsumed}, "
                     f"lag {stats.lag_ms(view.group) / 1000:.1f}s")
    unconsumed = sum(s.groups[view.group].unconsumed for s in view.stats)
    lag = max((s.lag_ms(view.group) for s in view.stats), default=0) / 1000
    lines.append(f"total: unconsumed {unconsumed}, lag {lag:.1f}s")
    return lines


def to_json(view: GroupView) -> dict[str, Any]:
    """The description as one JSON-able document (times ISO 8601, durations in seconds)."""
    topic = view.topic
    shards: list[dict[str, Any]] = []
    for stats, lease in zip(view.stats, view.leases, strict=True):
        pos = stats.groups[view.group]
        shards.append({
            "index": stats.index, "prefix": stats.prefix,
            "lease": {"state": lease.state, "owner": lease.owner, "generation": lease.generation,
                      "renewed": iso(lease.renewed_ms) if lease.renewed_ms is not None else None},
            "watermark": iso(pos.checkpoint.watermark_ms) if pos.checkpoint else None,
            "unconsumed": pos.unconsumed, "lag_s": stats.lag_ms(view.group) / 1000,
        })
    return {
        "group": view.group,
        "topic": f"s3://{topic.bucket}/{topic.name}",
        "layout": topic.layout,
        "server_time": iso(view.now_ms),
        "members": [{
            "member": m.member, "live": m.live, "host": m.host, "pid": m.pid,
            "started": iso(m.started_ms) if m.started_ms is not None else None,
            "renewed": iso(m.renewed_ms), "age_s": m.age_s, "lease_duration": m.lease_duration,
            "shards": list(m.shards),
        } for m in view.members],
        "shards": shards,
        "unconsumed": sum(s.groups[view.group].unconsumed for s in view.stats),
        "lag_s": max((s.lag_ms(view.group) for s in view.stats), default=0) / 1000,
    }
