"""Consumer groups, the I/O part: member records and shard leases under the control prefix.

In each bucket a group consumes, under ``_s3stream/groups/<group>/``:

* ``members/<member>.json``: rewritten every renewal (host, pid, the shards held). A member counts
  while its record's LastModified is within the lease duration of the server's clock.
* ``leases/<shard>.json``: ``{"owner", "generation", "renewal", "prefix"}``. Created with
  ``If-None-Match: *``; renewed (``renewal`` + 1, so the ETag changes at every write), taken over
  (owner and generation + 1) and released (owner ``null``) with ``If-Match`` on the ETag: of two
  members racing for a lease one gets a 412, and a taker's ``If-Match`` on the ETag it listed fails
  if the owner renewed after the listing.

Two loops, each every ``renew_interval`` seconds (counted from the start of its last pass):

* keep-alive: write the member record and renew every held lease, all at once. A 412 means the
  shard was taken (unless the lease holds a body this member sent and never heard back about: then
  it adopts that write): it is dropped at once, without a commit. Each holding is a
  :class:`~s3stream.groups.lease.Tenure` whose deadline is the send time of the last successful write plus
  the duration; past it the shard hands nothing out (no listing, no handler call) until a renewal
  succeeds, which proves nobody took it and resumes the shard where it was, or fails with a 412.
* rebalance: list the members and, if this member holds fewer shards than its share, the leases
  (reading the bodies whose ETag changed), then follow :func:`s3stream.groups.lease.plan`: release extra
  shards (the consumer stops starting their items, lets the running ones finish and commits first)
  and take free ones (the consumer fences the checkpoint, then polls). It starts an interval after
  the first registration, so members started together see each other before they take anything.

A slow listing therefore never delays a renewal. A member that stops cleanly first stops taking
shards (:meth:`Membership.stop_taking`), keeps renewing while its in-flight work finishes and its
final checkpoint is written, then releases its leases and deletes its record, so the others
rebalance at their next pass instead of waiting for it to expire.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from s3stream.errors import NotFound, PreconditionFailed, RetriableError
from s3stream.groups.lease import LEASE_FORMAT, LeaseView, Tenure, fair_share, is_live, plan
from s3stream.groups.lease import clock as lease_clock
from s3stream.layouts.topics import CONTROL_PREFIX
from s3stream.pipeline.checkpoint import ConditionalStore, shard_name
from s3stream.service import metrics
from s3stream.service.logs import get_logger

log = get_logger("s3stream.groups.membership")


GROUPS_PREFIX = f"{CONTROL_PREFIX}/groups/"
TAKE_ROUNDS = 3  # looks at the free leases in one rebalancing pass, when takes are lost


def group_prefix(group: str) -> str:
    return f"{GROUPS_PREFIX}{group}/"


def lease_key(group: str, prefix: str) -> str:
    return f"{group_prefix(group)}leases/{shard_name(prefix)}.json"


def member_key(group: str, member: str) -> str:
    return f"{group_prefix(group)}members/{member}.json"


def default_member_id() -> str:
    """``<host>-<pid>-<random>``: the random part keeps two containers on one host network (both
    pid 1, one host name) from sharing an id. A configured id (a StatefulSet pod's name) lets a
    restarted member take its own leases back at once instead of waiting them out."""
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Candidate:
    """A shard the group shares: its bucket and prefix, and what the consumer needs to open it."""

    bucket: str
    prefix: str
    payload: Any = None
    topic: str | None = None  # the topic (source prefix) the shard belongs to: a label of its metrics


@dataclass
class Held:
    """A lease this member holds: its tenure, the ETag of its last write, and the bodies it sent
    without learning whether they landed."""

    candidate: Candidate
    tenure: Tenure
    etag: str
    writes: int = 0  # this holding's writes so far: the ``renewal`` field of the next body
    releasing: bool = False
    overdue: bool = False  # not renewed within the duration: its shard is paused until it is
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one write of the lease at a time
    unconfirmed: list[bytes] = field(default_factory=list)

    @property
    def generation(self) -> int:
        return self.tenure.generation


Take = Callable[[Candidate, Tenure], Awaitable[bool]]  # open the shard under this tenure; False: could not
GiveUp = Callable[[Candidate], Awaitable[None]]  # finish in-flight work, commit, close the shard
Lost = Callable[[Candidate], None]  # close the shard now, without committing


class Membership:
    """One member of a consumer group: keeps its record, renews its leases, rebalances."""

    def __init__(self, store: ConditionalStore, *, group: str, member: str, duration: float,
                 renew_interval: float, candidates: list[Candidate], take: Take, give_up: GiveUp,
                 lost: Lost, clock: Callable[[], float] = lease_clock) -> None:
        self.store = store
        self.group = group
        self.member = member
        self.duration = duration
        self.renew_interval = renew_interval
        self.candidates = candidates
        self._take, self._give_up, self._lost = take, give_up, lost
        self.clock = clock
        self.held: dict[tuple[str, str], Held] = {}
        self.last_renewal = clock()
        self.taking = True  # False once the member stops: no more shards are taken
        self._registered = asyncio.Event()
        self._rebalancer: asyncio.Task[None] | None = None
        # (bucket, lease key) -> (ETag, owner, generation) of the lease's last known body: one entry
        # per lease, whatever its ETags (new at every write)
        self._bodies: dict[tuple[str, str], tuple[str, str | None, int]] = {}
        self._started_ms = int(time.time() * 1000)
        self.log = log.bind(group=group, member=member)

    async def run(self) -> None:
        """Renewals and rebalancing until cancelled, each on its own cadence, so a slow listing never
        delays a renewal; releases run beside them, so neither waits for a drain."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._keep_alive())
            self._rebalancer = tg.create_task(self._rebalancing(tg))

    def stop_taking(self) -> None:
        """Shutdown's first phase: take no more shards. Renewals go on (until :meth:`run` is
        cancelled), so the shards held stay ours while their last work finishes and is committed."""
        self.taking = False
        if self._rebalancer is not None:
            self._rebalancer.cancel()

    async def _rebalancing(self, tg: asyncio.TaskGroup) -> None:
        await self._registered.wait()
        await asyncio.sleep(self.renew_interval)  # members started together see each other first
        while True:
            began = time.monotonic()
            try:
                await self.rebalance(tg)
            except RetriableError as exc:
                self.log.warning("group rebalance failed; will retry", error=str(exc))
            self.observe()
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
            self.observe()
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
        self.last_renewal = self.clock()

    async def rebalance(self, tg: asyncio.TaskGroup) -> None:
        """List the members and the leases and follow :func:`~s3stream.groups.lease.plan`, bucket by
        bucket. A take lost to another member (members started together prefer different shards, but
        not disjoint ones) is followed at once by another look at the leases still free, up to
        ``TAKE_ROUNDS`` in all, rather than leaving those shards unread until the next pass."""
        began = time.monotonic()
        by_bucket: dict[str, list[Candidate]] = {}
        for cand in self.candidates:
            by_bucket.setdefault(cand.bucket, []).append(cand)
        for bucket, cands in by_bucket.items():
            for _ in range(TAKE_ROUNDS):
                if not await self._rebalance_bucket(bucket, cands, tg):
                    break
        self.log.debug("group rebalanced", seconds=round(time.monotonic() - began, 3), held=len(self.held))

    async def _rebalance_bucket(self, bucket: str, cands: list[Candidate], tg: asyncio.TaskGroup) -> bool:
        """One look at one bucket's members and leases; True when a take was lost to another member."""
        members, now_ms = await self._members(bucket)
        mine = [(k[1], h) for k, h in self.held.items() if k[0] == bucket]
        held = {prefix for prefix, h in mine if not h.releasing}
        releasing = frozenset(prefix for prefix, h in mine if h.releasing)
        wanting = self.taking and fair_share(len(cands), members, self.member) > len(held)
        views = await self._views(bucket, cands, now_ms) if wanting else {}  # at its share: no reads
        decided = plan(self.member, members, [c.prefix for c in cands], views, held, releasing)
        for prefix in decided.release:
            self.held[(bucket, prefix)].releasing = True
            tg.create_task(self._release_after_drain(self.held[(bucket, prefix)]))
        if not self.taking:
            return False
        by_prefix = {c.prefix: c for c in cands}
        taken = await asyncio.gather(*(self._acquire(by_prefix[v.shard], v, tg) for v in decided.acquire))
        return not all(taken)

    async def release_all(self) -> None:
        """Hand every held lease back and delete the member record (at shutdown, after the final
        commit), so the others count one member fewer and take the shards at their next pass."""
        self.stop_taking()
        await asyncio.gather(*(self._write_release(held) for held in list(self.held.values())))
        for bucket in sorted({c.bucket for c in self.candidates}):
            await self.store.delete_object(bucket, member_key(self.group, self.member))
        self.observe()

    def observe(self) -> None:
        """``s3stream_lease_owned`` of every shard: held (and not being given up) or not."""
        owned = {key for key, held in self.held.items() if not held.releasing}
        metrics.observe_leases(self.group, self.candidates, owned)

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
        """Every candidate's lease; a body is read when its ETag is new to this member (after every
        write: a renewal too). Only a member below its share asks."""
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
        """A new body of the same holding with ``If-Match``: success proves nobody took the lease,
        even if it was overdue, so a paused shard resumes where it was; a 412 drops the shard."""
        key = (held.candidate.bucket, held.candidate.prefix)
        async with held.lock:
            if self.held.get(key) is not held:
                return  # released or dropped meanwhile
            sent = self.clock()
            try:
                await self._write(held, self.member)
            except PreconditionFailed:
                if self.held.get(key) is held:
                    self.log.warning("lease taken by another member; dropping the shard", shard=key[1])
                    self._drop(held)
                return
            held.tenure.renewed(sent + self.duration)
            if held.overdue:
                held.overdue = False
                self.log.info("lease renewed after all; the shard resumes", shard=key[1])

    async def _acquire(self, cand: Candidate, view: LeaseView, tg: asyncio.TaskGroup) -> bool:
        """Take the lease, then open the shard beside the rebalancing (fencing and loading take time);
        False when another member was faster."""
        if (cand.bucket, cand.prefix) in self.held:
            return True
        generation = view.generation + 1
        sent = self.clock()
        body = _body(cand, self.member, generation, 0)
        try:
            etag = await self._put(cand, body, view.etag, self.member, generation)
        except PreconditionFailed:
            return False  # another member was faster
        held = Held(cand, Tenure(generation, sent + self.duration), etag, writes=1)
        self.held[(cand.bucket, cand.prefix)] = held
        self.log.info("lease taken", shard=cand.prefix, generation=generation, previous_owner=view.owner)
        tg.create_task(self._open(held))
        return True

    async def _open(self, held: Held) -> None:
        if not await self._take(held.candidate, held.tenure):
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
            held.tenure.end()  # ours no longer, before anyone can see it released
            try:
                await self._write(held, None)
            except (PreconditionFailed, RetriableError) as exc:  # taken already, or it will expire
                self.log.info("lease not released explicitly; it will expire", shard=key[1],
                              error=str(exc))

    async def _write(self, held: Held, owner: str | None) -> None:
        """Write the next body of ``held`` (``owner`` None: the release) with ``If-Match`` on its
        ETag. After a 412, a lease that holds one of our own unanswered bodies is ours still: adopt
        its ETag and write again once."""
        for attempt in range(2):
            body = _body(held.candidate, owner, held.generation, held.writes)
            held.writes += 1
            held.unconfirmed = [*held.unconfirmed[-3:], body]
            try:
                held.etag = await self._put(held.candidate, body, held.etag, owner, held.generation)
            except PreconditionFailed:
                if attempt or not await self._adopt(held):
                    raise
                continue
            held.unconfirmed.clear()
            return

    async def _adopt(self, held: Held) -> bool:
        """True (taking its ETag) when the stored lease is a body of ours whose answer never came."""
        try:
            stored = await self.store.get_object(held.candidate.bucket, lease_key(self.group,
                                                                                  held.candidate.prefix))
        except NotFound:
            return False
        if stored.body not in held.unconfirmed:
            return False
        held.etag = stored.etag
        return True

    async def _put(self, cand: Candidate, body: bytes, etag: str | None, owner: str | None,
                   generation: int) -> str:
        key = lease_key(self.group, cand.prefix)
        new_etag, _ = await self.store.put_object(cand.bucket, key, body, if_match=etag,
                                                  if_none_match=etag is None, content_type="application/json")
        self._bodies[(cand.bucket, key)] = (new_etag, owner, generation)
        return new_etag

    def _note_overdue(self) -> None:
        """A lease not renewed for a whole duration may be someone else's by now: its shard hands
        nothing out (its tenure does not hold) until a renewal succeeds or fails with a 412."""
        now = self.clock()
        for held in self.held.values():
            if not held.overdue and not held.tenure.holds(now):
                held.overdue = True
                self.log.warning("lease not renewed within its duration; the shard is paused",
                                 shard=held.candidate.prefix)

    def _drop(self, held: Held) -> None:
        self.held.pop((held.candidate.bucket, held.candidate.prefix), None)
        held.tenure.end()
        self._lost(held.candidate)

    def forfeit(self, bucket: str, prefix: str, tenure: Tenure | None) -> None:
        """The consumer found the shard it opened under ``tenure`` fenced by another member: forget
        that lease, write nothing. A conflict of a holding already dropped (its commit landed late)
        leaves a newer holding of the same shard alone."""
        held = self.held.get((bucket, prefix))
        if held is not None and held.tenure is tenure:
            del self.held[(bucket, prefix)]
            held.tenure.end()
            self.log.warning("shard fenced by another member; lease forfeited", shard=prefix)


def _body(cand: Candidate, owner: str | None, generation: int, renewal: int) -> bytes:
    return orjson.dumps({"format": LEASE_FORMAT, "owner": owner, "generation": generation,
                         "renewal": renewal, "prefix": cand.prefix})


def _parse(body: bytes) -> tuple[str | None, int]:
    try:
        doc = orjson.loads(body)
        owner = doc.get("owner")
        return (str(owner) if owner is not None else None, int(doc.get("generation", 0)))
    except (ValueError, AttributeError, TypeError):
        return (None, 0)  # damaged: treat as free; taking it rewrites it
