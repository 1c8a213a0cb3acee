"""The snapshot follower: the latest valid version of a key-value file in S3, in memory.

A batch job writes its output, a key-value file, to a versioned bucket; services read it from memory.
:class:`Follower` loads the latest version, then every ``interval`` seconds asks S3 whether it changed
with a conditional GET (``If-None-Match: <ETag>``): S3 answers ``304 Not Modified`` without a body
while nothing changed, so an idle check costs one GET request and no transfer. A new version is
downloaded, parsed and validated (:mod:`s3stream.integrations.snapshotparsers`) off the event loop, and
swapped in
with one assignment only when it is valid. A corrupt version is refused: the last good version keeps
being served, ``last_error`` says why, and the refused ETag is remembered, so the next checks are 304s
again instead of downloading the same corrupt file every interval. When S3 is unreachable the last
good version is served too. When the latest version is refused, the newest valid version newer than
the one served (at start: any of them) is looked for among the key's versions, at most
``fallback_versions`` of them, so a service that (re)starts while the latest file is corrupt still
serves the newest good data.

``last_error`` is None exactly when the version served is the latest one as of ``last_checked``.
Lifecycle like :class:`~s3stream.pipeline.consumer.Consumer`: ``await start()`` (the first load, which raises
when no valid version can be loaded), ``await run()`` (polls until :meth:`stop`), or ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any

from s3stream.config import S3Settings
from s3stream.errors import ConfigError, NotFound, S3StreamError, StoreError
from s3stream.integrations.snapshotparsers import InvalidSnapshot, Parser, frozen, resolve_parser
from s3stream.s3.keys import key_versions, split_url
from s3stream.s3.store import Store, StoredObject, open_store
from s3stream.service.logs import get_logger

log = get_logger("s3stream.integrations.snapshot")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_MAX_REFUSED = 1000


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One loaded version of the file: its data (read-only) and where it came from."""

    data: Mapping[str, Any]
    version_id: str | None
    etag: str
    loaded_at: datetime


SwapCallback = Callable[[Snapshot | None, Snapshot], Awaitable[None] | None]


class Follower:
    """Keeps the latest valid version of ``s3://BUCKET/KEY`` in memory (see the module docstring).

    ``s3`` says how to reach S3 (a store is opened on :meth:`start` and closed when :meth:`run`
    ends); or pass an open ``store``, which is left open. ``parser`` is ``csv``, ``csv-header``,
    ``json``, ``jsonl``, a ``module:attr`` name or a callable ``bytes -> Mapping[str, Any]``.
    """

    def __init__(self, url: str, *, parser: str | Parser = "csv", interval: float = 30.0,
                 fallback_versions: int = 10, s3: S3Settings | None = None,
                 store: Store | None = None, max_mb: int = 256) -> None:
        self.bucket, self.key = split_url(url)
        if not self.key or self.key.endswith("/"):
            raise ConfigError(f"{url}: expected s3://BUCKET/KEY of a key-value file")
        if interval <= 0 or fallback_versions < 0:
            raise ConfigError("snapshot: interval must be > 0 and fallback_versions >= 0")
        self.url = url
        self.parser_name, self._parser = resolve_parser(parser)
        self.interval = interval
        self.fallback_versions = fallback_versions
        self.max_bytes = max_mb << 20  # a version larger than this is refused without being read
        self.snapshot: Snapshot | None = None
        self.last_error: str | None = None
        self.last_checked: datetime | None = None
        self.checks = 0  # checks completed, whatever their outcome
        self.downloads = 0  # bodies downloaded (a 304 downloads nothing)
        self.started = asyncio.Event()
        self._s3 = s3 or S3Settings()
        self._store = store
        self._stack = contextlib.AsyncExitStack()
        self._owns_store = False
        self._seen_etag: str | None = None  # ETag of the latest version last looked at, loaded or refused
        self._refusal: str | None = None  # why the latest version is not the one served, if it is not
        self._refused: set[str] = set()  # version ids refused: never downloaded again by the fallback
        self._callbacks: list[SwapCallback] = []
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # --- what the service reads -------------------------------------------------------------------

    @property
    def data(self) -> Mapping[str, Any]:
        """The version served, read-only (empty before the first load)."""
        return self.snapshot.data if self.snapshot is not None else _EMPTY

    @property
    def version_id(self) -> str | None:
        return self.snapshot.version_id if self.snapshot is not None else None

    @property
    def etag(self) -> str | None:
        return self.snapshot.etag if self.snapshot is not None else None

    @property
    def loaded_at(self) -> datetime | None:
        return self.snapshot.loaded_at if self.snapshot is not None else None

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` in the version served, or ``default``."""
        return self.data.get(key, default)

    def on_swap(self, callback: SwapCallback) -> SwapCallback:
        """Call ``callback(old, new)`` (sync or async) after each swap; ``old`` is None for the first
        load. A callback that raises is logged and does not stop the follower."""
        self._callbacks.append(callback)
        return callback

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the first version (the newest valid one); raises when none can be loaded."""
        if self.started.is_set():
            return
        try:
            if self._store is None:
                self._store = await self._stack.enter_async_context(open_store(self._s3, max_connections=4))
                self._owns_store = True
            await self._check(initial=True)
        except BaseException:
            await self._close()
            raise
        self.started.set()

    async def run(self) -> None:
        """Start if needed, then check for a new version every ``interval`` s until :meth:`stop`."""
        await self.start()
        polling = asyncio.create_task(self._poll())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({polling, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (polling, stopping):
                task.cancel()
            await asyncio.gather(polling, stopping, return_exceptions=True)
            await self._close()
        error = None if polling.cancelled() else polling.exception()
        if error is not None:
            raise error

    def stop(self) -> None:
        """Stop polling; :meth:`run` returns once the store is closed."""
        self._stopping.set()

    async def __aenter__(self) -> Follower:
        await self.start()
        self._task = asyncio.create_task(self.run())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.stop()
        if self._task is not None:
            await self._task

    async def check(self) -> None:
        """Check for a new version now. Errors are recorded in ``last_error``, not raised."""
        try:
            await self._check(initial=False)
        except S3StreamError as exc:
            self.last_error = str(exc)
            log.warning("snapshot check failed; serving the last good version", url=self.url,
                        version_id=self.version_id, error=self.last_error)
        finally:
            self.checks += 1

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def _close(self) -> None:
        """Close the store if this follower opened it (a later start() opens a new one)."""
        if self._owns_store:
            await self._stack.aclose()
            self._store = None
            self._owns_store = False

    # --- one check ---------------------------------------------------------------------------------

    async def _check(self, *, initial: bool) -> None:
        store = self._store
        assert store is not None, "start() first"
        async with self._lock:
            try:
                obj = await store.get_object_if_changed(self.bucket, self.key, self._seen_etag,
                                                        max_bytes=self.max_bytes)
            except NotFound as exc:
                self.last_checked = _now()
                raise NotFound(f"{self.url} has no current version (missing, or deleted): {exc}",
                               code=exc.code, operation=exc.operation) from None
            self.last_checked = _now()
            if obj is None:  # 304: the latest version is the one looked at last time
                self.last_error = self._refusal
                return
            self._seen_etag = obj.etag
            self.downloads += 1
            try:
                data = await asyncio.to_thread(self._parse, obj.body)
            except Exception as exc:
                await self._refuse(store, obj, exc, initial=initial)
                return
            self._refusal = self.last_error = None
            await self._swap(Snapshot(data, obj.version_id, obj.etag, _now()))

    def _parse(self, body: bytes) -> Mapping[str, Any]:
        return frozen(self._parser(body))

    async def _refuse(self, store: Store, obj: StoredObject, exc: Exception, *, initial: bool) -> None:
        """The latest version is invalid: keep what is served, or fall back to an older valid one."""
        reason = str(exc) or type(exc).__name__
        self._refusal = f"version {obj.version_id or obj.etag} of {self.url} refused: {reason}"
        if obj.version_id:
            self._remember_refused(obj.version_id)
        log.warning("snapshot version refused", url=self.url, version_id=obj.version_id, error=reason,
                    serving=self.version_id)
        await self._fall_back(store)
        if self.snapshot is None:
            raise InvalidSnapshot(f"{self._refusal}; no older valid version to serve instead")
        self._refusal += f"; serving version {self.version_id or self.etag}"
        self.last_error = self._refusal

    async def _fall_back(self, store: Store) -> None:
        """Swap in the newest valid version newer than the one served (any, before the first load)."""
        if self.fallback_versions == 0:
            return
        try:
            versions = await key_versions(store, self.bucket, self.key)
        except StoreError as exc:  # a directory bucket has no ListObjectVersions
            log.info("no fallback: the key's versions cannot be listed", url=self.url, error=str(exc))
            return
        served = self.version_id
        candidates = []
        for entry in reversed(versions):  # newest first
            if served is not None and entry.version_id == served:
                break
            if not entry.deleted and entry.version_id not in self._refused and entry.version_id != "null":
                candidates.append(entry.version_id)
        for version_id in candidates[:self.fallback_versions]:
            try:
                older = await store.get_object(self.bucket, self.key, version_id, max_bytes=self.max_bytes)
                self.downloads += 1
                data = await asyncio.to_thread(self._parse, older.body)
            except StoreError as exc:  # expired by a lifecycle rule since the listing, say
                log.info("older snapshot version not readable", url=self.url, version_id=version_id,
                         error=str(exc))
                continue
            except Exception as exc:
                self._remember_refused(version_id)
                log.info("older snapshot version refused too", url=self.url, version_id=version_id,
                         error=str(exc))
                continue
            await self._swap(Snapshot(data, older.version_id, older.etag, _now()))
            return

    def _remember_refused(self, version_id: str) -> None:
        if len(self._refused) >= _MAX_REFUSED:
            self._refused.clear()
        self._refused.add(version_id)

    async def _swap(self, new: Snapshot) -> None:
        old, self.snapshot = self.snapshot, new
        log.info("snapshot loaded", url=self.url, version_id=new.version_id, keys=len(new.data),
                 previous=old.version_id if old is not None else None)
        for callback in list(self._callbacks):
            try:
                result = callback(old, new)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.error("snapshot swap callback failed", url=self.url, callback=repr(callback),
                          error=repr(exc))


def _now() -> datetime:
    return datetime.now(UTC)
