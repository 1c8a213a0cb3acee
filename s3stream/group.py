"""Consumer groups, the I/O part: member records and shard leases under the control prefix.

In each bucket a group consumes, under ``_s3stream/groups/<group>/``:

* ``members/<member>.json``: rewritten every renewal (host, pid, the shards held). A member counts
  while its record's LastModified is within the lease duration of the server's clock.
* ``leases/<shard>.json``: ``{"owner", "generation", "prefix"}``. Created with ``If-None-Match: *``;
  renewed (the same body again), taken over (owner and generation + 1) and released (owner ``null``)
  with ``If-Match`` on the ETag, so two members never both believe they hold a shard for long: the
  loser of a race gets a 412 and lets go.

Two loops, each every ``renew_interval`` seconds (counted from the start of its last pass):

* keep-alive: write the member record and renew every held lease, all at once. A 412 means the
  shard was taken: it is dropped at once, without a commit. A lease not renewed for a whole duration
  pauses its shard (the poller lists nothing) until a renewal succeeds, which proves nobody took it
  and resumes the shard where it was, or fails with a 412.
* rebalance: list the members and the leases, then follow :func:`s3stream.lease.plan`: release extra
  shards (the consumer finishes their in-flight work and commits first) and take free ones (the
  consumer fences the checkpoint, then polls). It starts an interval after the first registration,
  so members started together see each other before they take anything.

A slow listing therefore never delays a renewal. A member that stops cleanly releases its leases and
deletes its record, so the others rebalance at their next pass instead of waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog

from s3stream.checkpoint import shard_name
from s3stream.errors import NotFound, PreconditionFailed, RetriableError
from s3stream.lease import LEASE_FORMAT, LeaseView, is_live, plan
from s3stream.store import Store
from s3stream.topics import CONTROL_PREFIX

log = structlog.get_logger("s3stream.group")


GROUPS_PREFIX = f"{CONTROL_PREFIX}/groups/"


def group_prefix(group: str) -> str:
    return f"{GROUPS_PREFIX}{group}/"


def lease_key(group: str, prefix: str) -> str:
    return f"{group_prefix(group)}leases/{shard_name(prefix)}.json"


def member_key(group: str, member: str) -> str:
    return f"{group_prefix(group)}members/{member}.json"


def default_member_id() -> str:
    """``<host>-<pid>``: unique on a host, and stable across restarts of a container (pid 1)."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A shard the group shares: its bucket and prefix, and what the consumer needs to open it."""

    bucket: str
    prefix: str
    payload: Any = None


@dataclass
class Held:
    """A lease this member holds: the ETag of its last write and when that write was sent."""

    candidate: Candidate
    generation: int
    etag: str
    renewed_at: float = field(default_factory=time.monotonic)
    releasing: bool = False
    overdue: bool = False  # not renewed within the duration: its shard is paused until it is
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one write of the lease at a time


Take = Callable[[Candidate, int], Awaitable[bool]]  # open the shard under this generation; False: could not
GiveUp = Callable[[Candidate], Awaitable[None]]  # finish in-flight work, commit, close the shard
Lost = Callable[[Candidate], None]  # close the shard now, without committing


class Membership:
    """One member of a consumer group: keeps its record, renews its leases, rebalances."""

    def __init__(self, store: Store, *, group: str, member: str, duration: float, renew_interval: float,
                 candidates: list[Candidate], take: Take, give_up: GiveUp, lost: Lost) -> None:
        self.store = store
        self.group = group
        self.member = member
        self.duration = duration
        self.renew_interval = renew_interval
        self.candidates = candidates
        self._take, self._give_up, self._lost = take, give_up, lost
        self.held: dict[tuple[str, str], Held] = {}
        self.last_renewal = time.monotonic()
        self._registered = asyncio.Event()
        # (bucket, lease key) -> (ETag, owner, generation) of the lease's last known body: one entry
        # per lease, whatever its ETags (not MD5 with SSE-KMS or in directory buckets: new at every write)
        self._bodies: dict[tuple[str, str], tuple[str, str | None, int]] = {}
        self._started_ms = int(time.time() * 1000)
        self.log = log.bind(group=group, member=member)

    async def run(self) -> None:
        """Renewals and rebalancing until cancelled, each on its own cadence, so a slow listing never
        delays a renewal; releases run beside them, so neither waits for a drain."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keep_alive())
            await self._registered.wait()
            await asyncio.sleep(self.renew_interval)  # members started together see each other first
            while True:
                began = time.monotonic()
                try:
                    await self.rebalance(tg)
                except RetriableError as exc:
                    self.log.warning("group rebalance failed; will retry", error=str(exc))
                await asyncio.sleep(max(0.0, self.renew_interval - (time.monotonic() - began)))

    async def _keep_alive(self) -> None:
        """Every ``renew_interval`` (from the start of the last renewal): the member record and every
        held lease, all written at once."""
        while True:
            began = time.monotonic()
            try:
                await self.renew()
            except RetriableError as exc:
                self.log.warning("group renewal failed; will retry", error=str(exc))
            self._note_overdue()
            await asyncio.sleep(max(0.0, self.renew_interval - (time.monotonic() - began)))

    async def renew(self) -> None:
        """Rewrite the member record in each bucket and renew every held lease (``If-Match``)."""
        buckets = sorted({c.bucket for c in self.candidates})
        outcomes = await asyncio.gather(*(self._register(b) for b in buckets),
                                        *(self._renew_one(h) for h in list(self.held.values())),
                                        return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        self._registered.set()
        self.last_renewal = time.monotonic()

    async def rebalance(self, tg: asyncio.TaskGroup) -> None:
        """List the members and the leases and follow :func:`~s3stream.lease.plan`, bucket by bucket."""
        began = time.monotonic()
        by_bucket: dict[str, list[Candidate]] = {}
        for cand in self.candidates:
            by_bucket.setdefault(cand.bucket, []).append(cand)
        for bucket, cands in by_bucket.items():
            members, now_ms = await self._members(bucket)
            views = await self._views(bucket, cands, now_ms)
            held = {k[1] for k, h in self.held.items() if k[0] == bucket and not h.releasing}
            decided = plan(self.member, members, [c.prefix for c in cands], views, held)
            for prefix in decided.release:
                self.held[(bucket, prefix)].releasing = True
                tg.create_task(self._release_after_drain(self.held[(bucket, prefix)]))
            by_prefix = {c.prefix: c for c in cands}
            await asyncio.gather(*(self._acquire(by_prefix[v.shard], v, tg) for v in decided.acquire))
        self.log.debug("group rebalanced", seconds=round(time.monotonic() - began, 3), held=len(self.held))

    async def release_all(self) -> None:
        """Hand every held lease back and delete the member record (at shutdown, after the final
        commit), so the others count one member fewer and take the shards at their next pass."""
        for held in list(self.held.values()):
            await self._write_release(held)
        for bucket in sorted({c.bucket for c in self.candidates}):
            await self.store.delete_object(bucket, member_key(self.group, self.member))

    async def _register(self, bucket: str) -> None:
        body = orjson.dumps({
            "format": LEASE_FORMAT, "member": self.member, "host": socket.gethostname(), "pid": os.getpid(),
            "started_ms": self._started_ms, "lease_duration": self.duration,
            "shards": sorted(p for (b, p) in self.held if b == bucket),
        })
        await self.store.put_object(bucket, member_key(self.group, self.member), body,
                                    content_type="application/json")

    async def _members(self, bucket: str) -> tuple[list[str], int]:
        """The live members' ids, and the server's time of the listing."""
        prefix = f"{group_prefix(self.group)}members/"
        entries, now_ms = await self.store.list_all_objects(bucket, prefix)
        return [e.key[len(prefix):-len(".json")] for e in entries
                if e.key.endswith(".json") and is_live(e.last_modified_ms, now_ms, self.duration)], now_ms

    async def _views(self, bucket: str, cands: list[Candidate], now_ms: int) -> dict[str, LeaseView]:
        """Every candidate's lease; bodies are read only when their ETag is new to this member."""
        entries, _ = await self.store.list_all_objects(bucket, f"{group_prefix(self.group)}leases/")
        listed = {e.key: e for e in entries}
        views = {}
        for cand in cands:
            entry = listed.get(lease_key(self.group, cand.prefix))
            if entry is None:
                views[cand.prefix] = LeaseView(cand.prefix, None, 0, None, False)
                continue
            etag, live = entry.etag, is_live(entry.last_modified_ms, now_ms, self.duration)
            known = self._bodies.get((bucket, entry.key))
            if known is None or known[0] != etag:
                try:
                    obj = await self.store.get_object(bucket, entry.key)
                except NotFound:
                    views[cand.prefix] = LeaseView(cand.prefix, None, 0, None, False)
                    continue
                etag, live = obj.etag, live or obj.etag != entry.etag  # changed since listed: just written
                known = self._bodies[(bucket, entry.key)] = (etag, *_parse(obj.body))
            _, owner, generation = known
            views[cand.prefix] = LeaseView(cand.prefix, owner, generation, etag, live and owner is not None)
        return views

    async def _renew_one(self, held: Held) -> None:
        """The same lease body again with ``If-Match``: success proves nobody took the lease, even
        if it was overdue, so a paused shard resumes where it was; a 412 drops the shard."""
        key = (held.candidate.bucket, held.candidate.prefix)
        async with held.lock:
            if self.held.get(key) is not held:
                return  # released or dropped meanwhile
            sent = time.monotonic()
            try:
                etag = await self._put_lease(held.candidate, self.member, held.generation, held.etag)
            except PreconditionFailed:
                if self.held.get(key) is held:
                    self.log.warning("lease taken by another member; dropping the shard", shard=key[1])
                    self._drop(held)
                return
            held.etag, held.renewed_at = etag, sent
            if held.overdue:
                held.overdue = False
                self.log.info("lease renewed after all; the shard resumes", shard=key[1])

    async def _acquire(self, cand: Candidate, view: LeaseView, tg: asyncio.TaskGroup) -> None:
        """Take the lease, then open the shard beside the rebalancing (fencing and loading take time)."""
        generation = view.generation + 1
        sent = time.monotonic()
        try:
            etag = await self._put_lease(cand, self.member, generation, view.etag)
        except PreconditionFailed:
            return  # another member was faster
        held = Held(cand, generation, etag, renewed_at=sent)
        self.held[(cand.bucket, cand.prefix)] = held
        self.log.info("lease taken", shard=cand.prefix, generation=generation, previous_owner=view.owner)
        tg.create_task(self._open(held))

    async def _open(self, held: Held) -> None:
        if not await self._take(held.candidate, held.generation):
            await self._write_release(held)

    async def _release_after_drain(self, held: Held) -> None:
        self.log.info("giving a shard up", shard=held.candidate.prefix)
        await self._give_up(held.candidate)
        await self._write_release(held)

    async def _write_release(self, held: Held) -> None:
        key = (held.candidate.bucket, held.candidate.prefix)
        async with held.lock:  # after a renewal in flight, with the ETag it wrote
            if self.held.get(key) is not held:
                return
            del self.held[key]
            try:
                await self._put_lease(held.candidate, None, held.generation, held.etag)
            except (PreconditionFailed, RetriableError) as exc:  # taken already, or it will expire
                self.log.info("lease not released explicitly; it will expire", shard=key[1],
                              error=str(exc))

    async def _put_lease(self, cand: Candidate, owner: str | None, generation: int, etag: str | None) -> str:
        body = orjson.dumps({"format": LEASE_FORMAT, "owner": owner, "generation": generation,
                             "prefix": cand.prefix})
        key = lease_key(self.group, cand.prefix)
        new_etag, _ = await self.store.put_object(cand.bucket, key, body, if_match=etag,
                                                  if_none_match=etag is None, content_type="application/json")
        self._bodies[(cand.bucket, key)] = (new_etag, owner, generation)
        return new_etag

    def _note_overdue(self) -> None:
        """A lease not renewed for a whole duration may be someone else's by now: its shard lists
        nothing (:meth:`leased` is False) until a renewal succeeds or fails with a 412."""
        now = time.monotonic()
        for held in self.held.values():
            if not held.overdue and now - held.renewed_at >= self.duration:
                held.overdue = True
                self.log.warning("lease not renewed within its duration; the shard is paused",
                                 shard=held.candidate.prefix)

    def _drop(self, held: Held) -> None:
        self.held.pop((held.candidate.bucket, held.candidate.prefix), None)
        self._lost(held.candidate)

    def leased(self, bucket: str, prefix: str) -> bool:
        """True while the lease is held and its last renewal was sent less than a duration ago."""
        held = self.held.get((bucket, prefix))
        return held is not None and time.monotonic() - held.renewed_at < self.duration

    def forfeit(self, bucket: str, prefix: str) -> None:
        """The consumer found the shard fenced by another member: forget the lease, write nothing."""
        if self.held.pop((bucket, prefix), None) is not None:
            self.log.warning("shard fenced by another member; lease forfeited", shard=prefix)


def _parse(body: bytes) -> tuple[str | None, int]:
    try:
        doc = orjson.loads(body)
        owner = doc.get("owner")
        return (str(owner) if owner is not None else None, int(doc.get("generation", 0)))
    except (ValueError, AttributeError, TypeError):
        return (None, 0)  # damaged: treat as free; taking it rewrites it
