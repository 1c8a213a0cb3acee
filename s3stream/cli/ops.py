"""Operations commands: ``config check|show`` and ``dlq list|replay|purge``."""

from __future__ import annotations

import asyncio
import re
import sys
from typing import Any

import click
import orjson

from s3stream.cli.app import fail, run_async, s3_options
from s3stream.cli.common import command_settings
from s3stream.cli.jsonout import emit
from s3stream.cli.progress import reporter
from s3stream.config import Settings, build_settings, read_toml
from s3stream.errors import ConfigError, NotFound, ObjectUnreadable, S3StreamError
from s3stream.integrations.codecs import Decoder
from s3stream.integrations.routing import handler_names
from s3stream.layouts.topics import CONTROL_PREFIX, load_topic
from s3stream.message import Message, iso, ms_to_datetime
from s3stream.pipeline.handlers import check_handler, open_handler
from s3stream.s3.keys import split_url
from s3stream.s3.store import Store, open_store
from s3stream.service.deadletter import DeadLetter, group_prefix, iter_dead_letters

MASK = "**********"
_SECRET_NAME = re.compile(r"(?i)passw(or)?d|pass(phrase)?$|pwd$|secret|token|credential|(^|[_-])key$|apikey")
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#@\s]*)@")


@click.group("config")
def config_group() -> None:
    """Validate and show configuration."""


def _settings(path: str | None) -> Settings:
    return build_settings(read_toml(path) if path else {})


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def config_check(file: str) -> None:
    """Validate FILE (with S3STREAM_… overrides); exit 2 naming the bad field."""
    try:
        settings = _settings(file)
        for name in {name for src in settings.sources for name in handler_names(src)}:
            spec = settings.handlers.get(name)
            asyncio.run(check_handler(spec.use if spec else name, spec.options() if spec else None))
        for codec in {settings.producer.codec, *(src.codec for src in settings.sources)}:
            Decoder(codec)  # a codec plugin loads (its name was checked when the file was read)
    except S3StreamError as exc:
        fail(exc)
    click.echo(f"{file}: ok ({len(settings.sources)} source(s), {len(settings.handlers)} handler(s))")


@config_group.command("show")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
def config_show(file: str | None) -> None:
    """Print the effective config as JSON: defaults, FILE, then S3STREAM_… overrides. Secrets masked."""
    try:
        settings = _settings(file)
    except S3StreamError as exc:
        fail(exc)
    doc = redacted(settings.model_dump(mode="json"))
    sys.stdout.buffer.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")


def redacted(node: Any, name: str = "") -> Any:
    """``node`` with its secrets masked: any value set under a name that looks like a password,
    secret, token, credential or key (``secret_access_key``, a handler's ``password`` or ``api_key``,
    at any depth), and the user information of any URL (``http://user:pass@host`` shows the user
    only; a URL with a bare token as its user shows neither)."""
    if name and _SECRET_NAME.search(name) and node not in (None, "", {}, []):
        return MASK
    if isinstance(node, dict):
        return {k: redacted(v, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [redacted(v, name) for v in node]
    if isinstance(node, str):
        return _USERINFO.sub(_mask_userinfo, node)
    return node


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match.group(2).partition(":")
    return f"{match.group(1)}{user}:{MASK}@" if colon else f"{match.group(1)}{MASK}@"


@click.group()
def dlq() -> None:
    """Dead letters of a consumer group: list, replay through a handler, purge."""


def _dlq_options(func: Any) -> Any:
    func = s3_options(func)
    func = click.option("--group", default="default", show_default=True, help="Consumer group.")(func)
    return click.argument("url")(func)


async def _matching(settings: Settings, url: str, group: str) -> list[DeadLetter]:
    """The group's dead letters of messages under the URL's prefix. None there, and a prefix that is
    neither a topic nor holds any object: :class:`NotFound` ("topic … does not exist")."""
    bucket, prefix = split_url(url)
    async with open_store(settings.s3) as store:
        await store.check_bucket(bucket)
        found = [dl async for dl in iter_dead_letters(store, bucket, CONTROL_PREFIX, group)
                 if dl.original_key.startswith(prefix)]
        if (not found and prefix.strip("/") and await load_topic(store, bucket, prefix) is None
                and not (await store.list_objects(bucket, prefix, max_keys=1)).entries):
            raise NotFound(f"topic s3://{bucket}/{prefix.strip('/')} does not exist "
                           "(no topic metadata, no objects, no dead letters)", operation="ListObjectsV2")
        return found


def dead_letter_json(dl: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON (its time ISO 8601 UTC; ``dead_letter`` is where it is stored)."""
    return {"time": iso(dl.time_ms), "bucket": dl.original_bucket, "key": dl.original_key,
            "version_id": dl.version_id, "offset": dl.offset, "deleted": dl.deleted, "attempts": dl.attempts,
            "error": dl.error, "traceback": dl.traceback, "dead_letter": dl.key}


@dlq.command("list")
@_dlq_options
@click.option("--json", "as_json", is_flag=True, help="A JSON array of dead letters (times ISO 8601 UTC).")
def dlq_list(url: str, group: str, as_json: bool, endpoint_url: str | None, config: str | None) -> None:
    """One line per dead letter under s3://BUCKET/PREFIX: time, key, version, attempts, error.

    A prefix that is neither a topic nor holds objects or dead letters does not exist: exit 2."""

    async def go() -> None:
        found = await _matching(command_settings(config, endpoint_url), url, group)
        if as_json:
            emit([dead_letter_json(dl) for dl in found])
            return
        for dl in found:
            where = dl.original_key + (f"#{dl.offset}" if dl.offset is not None else "")
            click.echo(f"{iso(dl.time_ms)}  {where}  {dl.version_id}  attempts={dl.attempts}  {dl.error}")

    run_async(go)


@dlq.command("purge")
@_dlq_options
@click.option("--yes", is_flag=True, help="Confirm: the dead letters are deleted for good.")
def dlq_purge(url: str, group: str, yes: bool, endpoint_url: str | None, config: str | None) -> None:
    """Delete the dead letters under s3://BUCKET/PREFIX."""
    if not yes:
        fail(ConfigError("dlq purge deletes dead letters for good: add --yes"))

    async def go() -> None:
        settings = command_settings(config, endpoint_url)
        found = {dl.key for dl in await _matching(settings, url, group)}
        bucket, _ = split_url(url)
        async with open_store(settings.s3) as store:
            idents = await _all_versions(store, bucket, group_prefix(CONTROL_PREFIX, group), found)
            with reporter(f"purging dead letters of {url}", unit="versions") as progress:
                for start in range(0, len(idents), 1000):
                    await store.delete_versions(bucket, idents[start:start + 1000])
                    progress(min(start + 1000, len(idents)), len(idents))
        click.echo(f"purged {len(found)} dead letter(s)", err=True)

    run_async(go)


async def _all_versions(store: Store, bucket: str, prefix: str,
                        keys: set[str]) -> list[tuple[str, str | None]]:
    """Every version and delete marker of ``keys`` (in a versioned bucket a plain delete would leave
    the dead letter behind as a noncurrent version)."""
    idents: list[tuple[str, str | None]] = []
    key_marker: str | None = None
    version_marker: str | None = None
    while True:
        page = await store.list_versions(bucket, prefix, key_marker=key_marker,
                                         version_id_marker=version_marker)
        idents += [(e.key, e.version_id if e.version_id != "null" else None)
                   for e in page.entries if e.key in keys]
        if not page.truncated:
            break
        key_marker, version_marker = page.next_key_marker, page.next_version_id_marker
    if not idents:  # an unversioned bucket: ListObjectVersions still lists plain objects as "null"
        idents = [(k, None) for k in keys]
    return idents


@dlq.command("replay")
@_dlq_options
@click.option("--handler", "spec", default="stdout", show_default=True, help="Handler to replay into.")
def dlq_replay(url: str, group: str, spec: str, endpoint_url: str | None, config: str | None) -> None:
    """Hand each dead letter to a handler again (a deletion as a deletion); those it accepts are
    deleted, the rest stay."""

    async def go() -> None:
        settings = command_settings(config, endpoint_url, sections=("s3", "handlers", "consumer"))
        named = settings.handlers.get(spec)
        handler = await (open_handler(named.use, named.options(), name=spec) if named else open_handler(spec))
        bucket, _ = split_url(url)
        done = failed = 0
        found = await _matching(settings, url, group)
        async with open_store(settings.s3) as store:
            with reporter(f"replaying dead letters of {url}", unit="dead letters") as progress:
                for dl in found:
                    progress(done + failed, len(found))
                    try:
                        await _replay_one(store, handler, dl, settings.consumer.max_body_mb << 20)
                    except _StillFailing as exc:
                        failed += 1
                        click.echo(f"still failing: {dl.original_key}: {exc}", err=True)
                        continue
                    await store.delete_object(bucket, dl.key)
                    done += 1
                progress(done + failed, len(found))
        await handler.close()
        click.echo(f"replayed {done}, still failing {failed}", err=True)

    run_async(go)


class _StillFailing(Exception):
    """A dead letter that could not be replayed (its message unreadable, or the handler raised)."""


async def _replay_one(store: Store, handler: Any, dl: DeadLetter, max_bytes: int) -> None:
    """Hand one dead letter's message to ``handler``; :class:`_StillFailing` when that fails."""
    try:
        message = await _replayed(store, dl, max_bytes)
    except ObjectUnreadable as exc:
        raise _StillFailing(str(exc)) from None
    try:
        await handler.handle(message)
    except Exception as exc:
        raise _StillFailing(repr(exc)) from None


async def _replayed(store: Store, dl: DeadLetter, max_bytes: int) -> Message:
    """The message a dead letter stands for: a deletion stays a deletion (no body, nothing fetched);
    a version too large to be kept in the dead letter is fetched again."""
    when = ms_to_datetime(dl.time_ms)
    if dl.deleted:
        return Message(bucket=dl.original_bucket, key=dl.original_key, version_id=dl.version_id,
                       last_modified=when, size=0, etag="", body=b"", deleted=True, offset=dl.offset)
    body = dl.body
    if body is None:
        body = (await store.get_object(dl.original_bucket, dl.original_key, dl.version_id,
                                       max_bytes=max_bytes)).body
    return Message(bucket=dl.original_bucket, key=dl.original_key, version_id=dl.version_id,
                   last_modified=when, size=len(body), etag="", body=body, offset=dl.offset)
