"""``s3stream snapshot serve|rollback`` and ``s3stream bucket lifecycle``: the key-value service of the
snapshot follower.

``snapshot serve`` runs a :class:`~s3stream.integrations.snapshot.Follower` behind a small aiohttp server;
``snapshot rollback`` restores an older version of the file by copying it over the key (S3's way of
restoring a previous version), and ``bucket lifecycle`` sets the rule that expires the versions a
rollback could go back to once they are old enough.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import click
import orjson
from aiohttp import web

from s3stream.cli.app import fail, run_async, s3_options, stop_on_signals
from s3stream.cli.common import command_settings
from s3stream.config import Settings
from s3stream.errors import ConfigError, NotFound, S3StreamError, VersioningNotEnabled
from s3stream.integrations import snapshotmetrics
from s3stream.integrations.snapshot import Follower
from s3stream.integrations.snapshotparsers import InvalidSnapshot, frozen, resolve_parser
from s3stream.layouts.topics import is_directory_bucket
from s3stream.ops.admin import is_versioned
from s3stream.s3.keys import key_versions, split_url
from s3stream.s3.store import open_store
from s3stream.service.metrics import metrics_handler

LIFECYCLE_RULE_ID = "s3stream-noncurrent-versions"
VERSION_HEADER = "X-S3Stream-Version-Id"


@click.group("snapshot")
def snapshot_group() -> None:
    """Follow a key-value file in S3: serve its latest valid version, roll it back."""


@snapshot_group.command("serve")
@click.argument("url", required=False)
@click.option("--parser", help="csv, csv-header, json, jsonl or module:attr. [default: csv]")
@click.option("--port", type=click.IntRange(0, 65535), help="HTTP port (0: any free one). [default: 8080]")
@click.option("--host", help="Address to listen on. [default: 127.0.0.1]")
@click.option("--interval", type=float, help="Seconds between checks for a new version. [default: 30]")
@s3_options
def snapshot_serve(url: str | None, endpoint_url: str | None, config: str | None, **opts: Any) -> None:
    """Serve s3://BUCKET/KEY over HTTP: GET /kv/<key>, /status, /healthz; until SIGTERM/SIGINT."""
    chosen = {name: value for name, value in {"url": url, **opts}.items() if value is not None}
    try:
        settings = command_settings(config, endpoint_url, sections=("s3", "snapshot"), snapshot=chosen)
        follower = _follower(settings)
    except S3StreamError as exc:
        fail(exc)
    run_async(lambda: serve(follower, settings.snapshot.host, settings.snapshot.port))


def _follower(settings: Settings) -> Follower:
    snap = settings.snapshot
    if snap.url is None:
        raise ConfigError("snapshot serve: give s3://BUCKET/KEY (or [snapshot] url in the --config file)")
    return Follower(snap.url, parser=snap.parser, interval=snap.interval,
                    fallback_versions=snap.fallback_versions, s3=settings.s3, max_mb=snap.max_mb)


async def serve(follower: Follower, host: str, port: int) -> None:
    """Serve ``follower`` over HTTP until SIGTERM or SIGINT (a second SIGINT exits at once)."""
    server = KVServer(follower, host, port)
    with stop_on_signals(follower.stop):
        try:
            try:
                await server.start()
            except OSError as exc:
                raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
            running = asyncio.create_task(follower.run())
            started = asyncio.create_task(follower.started.wait())
            await asyncio.wait({running, started}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if follower.started.is_set():
                click.echo(f"serving {follower.url} version {follower.version_id} ({len(follower.data)} "
                           f"keys) on http://{host}:{server.port}", err=True)
            await running
        finally:
            await server.stop()


class KVServer:
    """``GET /kv/<key>`` (the value; 404 when absent), ``GET /status``, ``GET /healthz`` and ``GET /metrics``.

    A string value is sent as ``text/plain``, any other value (or any value, when the request accepts
    ``application/json`` and not ``text/plain``) as JSON. Every answer names the version it was read
    from in ``X-S3Stream-Version-Id``, so what a client saw can be traced to one version of the file.
    """

    def __init__(self, follower: Follower, host: str, port: int) -> None:
        self.follower = follower
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._collector: snapshotmetrics.FollowerCollector | None = None

    async def start(self) -> None:
        self._collector = snapshotmetrics.register(self.follower)
        app = web.Application()
        app.router.add_get("/kv/{key:.+}", self._kv)
        app.router.add_get("/status", self._status)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", metrics_handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except BaseException:
            await self.stop()
            raise
        if self.port == 0 and self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._collector is not None:
            snapshotmetrics.unregister(self._collector)
            self._collector = None

    def _headers(self) -> dict[str, str]:
        return {VERSION_HEADER: self.follower.version_id or "null"}

    async def _kv(self, request: web.Request) -> web.Response:
        snapshot = self.follower.snapshot
        if snapshot is None:
            return web.json_response({"error": "no version loaded yet"}, status=503)
        key = request.match_info["key"]
        headers = {VERSION_HEADER: snapshot.version_id or "null"}
        if key not in snapshot.data:
            return web.json_response({"error": "no such key", "key": key}, status=404, headers=headers)
        value = snapshot.data[key]
        accept = request.headers.get("Accept", "")
        if isinstance(value, str) and not ("application/json" in accept and "text/plain" not in accept):
            return web.Response(text=value, content_type="text/plain", charset="utf-8", headers=headers)
        return web.Response(body=orjson.dumps(value, default=str), content_type="application/json",
                            headers=headers)

    async def _status(self, _: web.Request) -> web.Response:
        f = self.follower
        return web.json_response({
            "url": f.url, "parser": f.parser_name, "interval": f.interval, "version_id": f.version_id,
            "etag": f.etag, "loaded_at": _iso(f.loaded_at), "last_checked": _iso(f.last_checked),
            "last_error": f.last_error, "keys": len(f.data), "checks": f.checks, "downloads": f.downloads,
        }, headers=self._headers(), dumps=lambda doc: orjson.dumps(doc).decode())

    async def _healthz(self, _: web.Request) -> web.Response:
        loaded = self.follower.snapshot is not None
        doc = {"status": "ok" if loaded else "loading", "version_id": self.follower.version_id}
        return web.json_response(doc, status=200 if loaded else 503, headers=self._headers())


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z") if moment else None


# --- rollback --------------------------------------------------------------------------------------


@snapshot_group.command("rollback")
@click.argument("url")
@click.option("--to", "version_id", required=True, help="The version id to restore.")
@click.option("--parser", help="Refuse to restore a version this parser refuses (csv, json, …).")
@s3_options
def snapshot_rollback(url: str, version_id: str, parser: str | None, endpoint_url: str | None,
                      config: str | None) -> None:
    """Make an older version of s3://BUCKET/KEY its latest again (a copy); prints the new version id."""
    run_async(lambda: rollback(command_settings(config, endpoint_url), url, version_id, parser=parser))


async def rollback(settings: Settings, url: str, version_id: str, *, parser: str | None) -> None:
    """Copy ``version_id`` of the key over the key, so that it becomes the latest version again."""
    bucket_name, key = split_url(url)
    if not key:
        raise ConfigError(f"{url}: expected s3://BUCKET/KEY")
    check = resolve_parser(parser) if parser else None
    async with open_store(settings.s3, max_connections=2) as store:
        await store.check_bucket(bucket_name)
        if not await is_versioned(store, bucket_name):
            raise VersioningNotEnabled(f"bucket {bucket_name!r} is not versioned: there is no older version "
                                       "to roll back to")
        versions = await key_versions(store, bucket_name, key)
        entry = next((e for e in versions if e.version_id == version_id), None)
        if entry is None:
            newest = ", ".join(e.version_id for e in reversed(versions[-3:])) or "none"
            raise NotFound(f"version {version_id!r} of {url} does not exist (newest versions: {newest}; "
                           f"`s3stream history {url}` lists them all)")
        if entry.deleted:
            raise ConfigError(f"version {version_id} of {url} is a delete marker: nothing to restore")
        if entry.latest:
            click.echo(version_id)
            click.echo(f"version {version_id} is already the latest version of {url}", err=True)
            return
        if check is not None:
            body = (await store.get_object(bucket_name, key, version_id)).body
            try:
                frozen(check[1](body))
            except Exception as exc:
                raise InvalidSnapshot(f"version {version_id} of {url} is refused by the {check[0]} parser "
                                      f"({exc}); not restored") from None
        new_version = await store.copy_version(bucket_name, key, version_id)
    click.echo(new_version or "null")
    click.echo(f"restored version {version_id} of {url} as its latest version {new_version}", err=True)


# --- bucket lifecycle ------------------------------------------------------------------------------


@click.command("lifecycle")
@click.argument("name")
@click.option("--noncurrent-days", type=click.IntRange(min=1), required=True,
              help="Delete a version this many days after a newer one replaced it.")
@click.option("--prefix", default="", help="Only under this key prefix. [default: the whole bucket]")
@s3_options
def bucket_lifecycle(name: str, noncurrent_days: int, prefix: str, endpoint_url: str | None,
                     config: str | None) -> None:
    """Expire noncurrent versions in bucket NAME after D days; other rules are kept."""
    run_async(lambda: set_lifecycle(command_settings(config, endpoint_url), name, noncurrent_days, prefix))


async def set_lifecycle(settings: Settings, name: str, days: int, prefix: str) -> None:
    """Add or replace s3stream's noncurrent-version rule (by its ID), keeping every other rule."""
    if is_directory_bucket(name):
        raise ConfigError(f"bucket {name!r} is a directory bucket: it keeps no versions to expire")
    rule_id = f"{LIFECYCLE_RULE_ID}:{prefix}" if prefix else LIFECYCLE_RULE_ID
    if len(rule_id) > 255:
        raise ConfigError(f"--prefix is too long for a lifecycle rule ID ({len(rule_id)} > 255 characters)")
    rule: dict[str, Any] = {"ID": rule_id, "Status": "Enabled", "Filter": {"Prefix": prefix},
                            "NoncurrentVersionExpiration": {"NoncurrentDays": days}}
    async with open_store(settings.s3, max_connections=2) as store:
        await store.check_bucket(name)
        versioned = await is_versioned(store, name)
        current = await store.lifecycle_configuration(name)
        kept = [r for r in current["Rules"] if r.get("ID") != rule_id]
        await store.put_lifecycle_configuration(name, {**current, "Rules": [*kept, rule]})
    where = f"under {prefix!r}" if prefix else "in the whole bucket"
    click.echo(f"bucket {name}: noncurrent versions {where} expire {days} day(s) after they are replaced "
               f"(rule {rule_id!r}; {len(kept)} other rule(s) kept)")
    if not versioned:
        click.echo(f"note: bucket {name} is not versioned; the rule applies once versioning is enabled",
                   err=True)
