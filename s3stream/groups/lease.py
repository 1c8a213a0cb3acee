"""Consumer-group leases, the pure part: who holds what, and what a member should take or give up.

A group's members share its shards with no coordinator; the bucket is the coordination store (the
I/O lives in :mod:`s3stream.groups.membership`). Each shard has a lease object naming its ``owner`` and a
``generation`` that grows by one at every change of hands. A lease is *live* while its owner renews
it: its LastModified is within the lease duration of the server's clock. Released leases (owner
``None``), expired ones and missing ones are *free*.

Every member computes the same balanced target from the same facts: with ``S`` shards and the live
members sorted by id, member ``i`` should hold ``S // N`` shards, plus one when ``i < S % N``. So each
holds ⌊S/N⌋ or ⌈S/N⌉ and the targets add up to ``S``. A member above its target releases its extra
shards (after finishing their work); one below takes free shards in an order of its own (a hash of
its id and the shard), so members rarely race for the same one, and a lost race costs one 412. A
shard still being given up is neither held nor free to its member: it is taken back only once its
release is written.

A member's belief that it owns a shard is a :class:`Tenure`: the lease's generation and a deadline on
the member's own :data:`clock`, the send time of its last successful write plus the duration. A taker
waits for the lease's LastModified (stamped after that send) plus the duration and a second on the
server's clock, so a tenure always ends before anyone else's can begin; and every renewal writes a
new body (its ``renewal`` count), so a taker's ``If-Match`` on a listed ETag never succeeds against a
lease renewed after the listing.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

LEASE_FORMAT = 1


@dataclass(frozen=True, slots=True)
class LeaseView:
    """One shard's lease as a listing (and a read of its body) shows it."""

    shard: str  # the shard's prefix
    owner: str | None  # None: released
    generation: int
    etag: str | None  # None: no lease object yet
    live: bool  # owned, and renewed within the lease duration

    @property
    def free(self) -> bool:
        return self.etag is None or self.owner is None or not self.live


@dataclass(frozen=True, slots=True)
class Plan:
    """What one rebalancing pass should change: shards to give up, and leases to take."""

    release: list[str]
    acquire: list[LeaseView]


def _clock() -> Callable[[], float]:
    boot = getattr(time, "CLOCK_BOOTTIME", None)
    if boot is None:
        return time.monotonic
    return lambda: time.clock_gettime(boot)


clock = _clock()
"""Seconds on the clock tenures are kept on: CLOCK_BOOTTIME where the system has it (Linux), which
goes on counting while the machine is suspended, so a member whose VM was frozen finds its hold
lapsed when it wakes; the monotonic clock elsewhere."""


@dataclass(eq=False, slots=True)
class Tenure:
    """One holding of a shard's lease, as its holder sees it: shared by the membership (which moves
    ``until`` at each renewal and ends it) and the shard's pipeline (which hands out nothing once it
    no longer holds)."""

    generation: int
    until: float  # deadline on :data:`clock`: last successful write's send time + the lease duration
    ended: bool = False  # taken by another member, fenced, released or given back
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set at each renewal and at the end

    def holds(self, now: float) -> bool:
        """True while the lease is surely still ours at time ``now`` on :data:`clock`."""
        return not self.ended and now < self.until

    def renewed(self, until: float) -> None:
        self.until = until
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def settled(self, now: Callable[[], float]) -> bool:
        """Wait while the lease is overdue but not known lost; True once it holds again, False once
        it has ended."""
        while not self.ended and not self.holds(now()):
            await self.changed.wait()
        return not self.ended


def is_live(last_modified_ms: int, now_ms: int, duration_s: float) -> bool:
    """A lease renewed at ``last_modified_ms`` is live at server time ``now_ms``. Both are whole
    seconds on S3, so a second of slack keeps a taker from seeing a lease expire early."""
    return now_ms - last_modified_ms <= duration_s * 1000 + 1000


def fair_share(shards: int, members: list[str], me: str) -> int:
    """How many of ``shards`` the member ``me`` should hold among ``members`` (``me`` counted)."""
    ranked = sorted({*members, me})
    rank = ranked.index(me)
    return shards // len(ranked) + (1 if rank < shards % len(ranked) else 0)


def preference(me: str, shard: str) -> bytes:
    """The order in which ``me`` tries free shards: stable for a member, different between members."""
    return hashlib.blake2b(f"{me}\0{shard}".encode(), digest_size=8).digest()


def plan(me: str, members: list[str], shards: list[str], views: dict[str, LeaseView],
         held: set[str], releasing: frozenset[str] = frozenset()) -> Plan:
    """One rebalancing pass's decisions for ``me``, holding ``held`` and still giving up ``releasing``,
    given every shard's lease view.

    A lease still naming ``me`` that ``me`` does not hold (left by this member's previous run, under
    the same member id) is taken back at once rather than waited out; one being released is not."""
    target = fair_share(len(shards), members, me)
    if len(held) > target:
        extra = sorted(held, key=lambda s: preference(me, s), reverse=True)[: len(held) - target]
        return Plan(release=sorted(extra), acquire=[])
    need = target - len(held)
    if need <= 0:
        return Plan(release=[], acquire=[])
    free = []
    for shard in shards:
        if shard in held or shard in releasing:
            continue
        view = views.get(shard) or LeaseView(shard, None, 0, None, False)
        if view.free or view.owner == me:
            free.append(view)
    free.sort(key=lambda v: (v.owner != me, preference(me, v.shard)))
    return Plan(release=[], acquire=free[:need])
