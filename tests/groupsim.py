"""A simulated consumer group for the model-based tests: real memberships and fences over
:mod:`tests.memstore`, on one event loop and a virtual clock.

A :class:`Process` is one run of a member: a real :class:`~s3stream.groups.membership.Membership` and real
:class:`~s3stream.pipeline.checkpoint.S3CheckpointStore` fences, wired the way
:mod:`s3stream.pipeline.consumer` wires
them (take = fence then open, give up = commit then close, lost = close, a commit's conflict forfeits),
its requests going through a network that may delay them, lose their answers or time them out. A
:class:`Cluster` holds the processes, the store and the clock, runs the loop until nothing can go on,
watches every write as it lands, and checks the protocol's invariants:

(a) no two members both believe they own a shard (open, tenure holding at their clock) with a fence
    that would accept their commit;
(b) a member that believes it owns a shard is named by the shard's stored lease, at its generation;
(c) a stored checkpoint's lease generation never decreases;
(d) a lease's generation never decreases, and one generation names one owner;
(e) a process has a shard open at most once;
(f) a checkpoint's committed progress never goes back;

and, once the faults are over and the members have renewed and rebalanced for a while, liveness: each
shard has exactly one owner and the holdings are balanced.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson

from s3stream.errors import CheckpointConflict, EndpointUnreachable, RetriableError
from s3stream.groups.lease import Tenure, fair_share
from s3stream.groups.membership import Candidate, Membership, lease_key
from s3stream.layouts.cursor import Checkpoint
from s3stream.pipeline.checkpoint import S3CheckpointStore
from tests.memstore import MemStore, Request, Stored

BUCKET, GROUP, CONTROL = "stream", "workers", "_s3stream/checkpoints"
RENEW_INTERVAL = 3.0
EPOCH = 1_700_000_000
SHARDS = ["orders/0/", "orders/1/", "orders/2/"]


def kind(request: Request) -> str:
    if request.op == "LIST" and "/leases/" in request.key:
        return "list"
    if request.op == "PUT" and "/leases/" in request.key:
        return "lease"
    return "checkpoint" if request.op == "PUT" and request.key.startswith(CONTROL) else "other"


@dataclass(eq=False)
class Opened:
    """A shard open in a process: the tenure it was opened under and its checkpoint's fence."""

    prefix: str
    tenure: Tenure
    checkpoints: S3CheckpointStore
    draining: bool = False  # being given up: hands nothing out any more
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # its commits take turns


@dataclass(eq=False)
class Parked:
    """A request held in the network until a ``land`` step lets it go on."""

    request: Request
    phase: str  # "sent": not applied yet; "applied": its answer has not arrived
    go: asyncio.Future[None]


class Process:
    """One run of a member: a Membership over the shared store, the shards it opened (as
    s3stream.pipeline.consumer opens, gives up and drops them) and the TaskGroup its work runs in."""

    def __init__(self, model: Cluster, member: str, offset: float) -> None:
        self.model, self.member, self.offset = model, member, offset
        self.paused = self.stopping = self.dead = False
        self.network: dict[str, str] = {}  # request kind -> the fault its requests meet, until healed
        self.faults: dict[Request, str] = {}
        self.slow: tuple[float, float] | None = None  # lease writes: seconds before applied, before answered
        self.store = model.mem.client(member, self.hook)
        self.membership = Membership(
            self.store, group=GROUP, member=member, duration=model.duration, renew_interval=RENEW_INTERVAL,
            candidates=[Candidate(BUCKET, p) for p in model.shards], take=self.take,
            give_up=self.give_up, lost=self.lost, clock=self.clock)
        self.opened: list[Opened] = []
        self.renewing, self.rebalancing = asyncio.Lock(), asyncio.Lock()  # each is one loop: a pass at a time
        self.tg: asyncio.TaskGroup | None = None
        self.host = model.loop.create_task(self._host())

    def clock(self) -> float:
        return self.model.t + self.offset

    async def _host(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self.tg = tg
            await asyncio.get_running_loop().create_future()  # until the process ends

    def end(self) -> None:
        self.dead = True
        self.host.cancel()

    def believed(self) -> list[Opened]:
        return [o for o in self.opened if not o.draining and o.tenure.holds(self.clock())]

    async def hook(self, request: Request, phase: str) -> None:
        if phase == "sent" and self.dead:
            raise EndpointUnreachable("the process is gone")
        if self.slow is not None and kind(request) == "lease":
            self.model.t += self.slow[0 if phase == "sent" else 1]
        fault = self.network.get(kind(request)) if phase == "sent" else self.faults.pop(request, None)
        if fault == "timeout":  # the sender gives up at once; the request lands when let go
            self.store.fail(request, EndpointUnreachable("timed out"))
        if fault in ("late", "timeout") or (fault == "slow-answer" and phase == "applied"):
            go = self.model.loop.create_future()
            self.model.parked.append(Parked(request, phase, go))
            await go
        elif fault == "lost" and phase == "applied":
            raise EndpointUnreachable("connection reset after the write")
        elif fault is not None:
            self.faults[request] = fault

    async def take(self, cand: Candidate, tenure: Tenure) -> bool:
        """As Consumer._take_shard: fence the checkpoint under the lease, then open the shard."""
        checkpoints = S3CheckpointStore(self.store, bucket=BUCKET, prefix=cand.prefix, control_prefix=CONTROL,
                                        group=GROUP)
        try:
            await checkpoints.fence(self.member, tenure.generation)
        except (CheckpointConflict, RetriableError):
            return False
        if self.stopping or tenure.ended:
            return False
        self.opened.append(Opened(cand.prefix, tenure, checkpoints))
        return True

    async def give_up(self, cand: Candidate) -> None:
        """As Consumer._give_up_shard: stop handing out, commit, close."""
        opened = next((o for o in self.opened if o.prefix == cand.prefix), None)
        if opened is not None:
            opened.draining = True
            await self.commit(opened)
            self.close(opened)

    def lost(self, cand: Candidate) -> None:
        """As Consumer._drop_shard: close at once, commit nothing."""
        opened = next((o for o in self.opened if o.prefix == cand.prefix), None)
        if opened is not None:
            self.close(opened)

    def close(self, opened: Opened) -> None:
        if opened in self.opened:
            self.opened.remove(opened)

    async def commit(self, opened: Opened) -> None:
        """As Checkpointer.commit: one at a time per shard; a conflict forfeits the lease and closes."""
        async with opened.lock:
            try:
                await opened.checkpoints.save(Checkpoint(watermark_ms=next(self.model.marks)))
            except CheckpointConflict:
                self.membership.forfeit(BUCKET, opened.prefix, opened.tenure)
                self.close(opened)
            except RetriableError:
                pass

    async def renew(self) -> None:
        async with self.renewing:
            with contextlib.suppress(RetriableError):
                await self.membership.renew()

    async def rebalance(self) -> None:
        assert self.tg is not None
        async with self.rebalancing:
            with contextlib.suppress(RetriableError):
                await self.membership.rebalance(self.tg)

    async def stop(self) -> None:
        """A clean stop: take nothing more, commit every open shard while renewing, release, exit."""
        self.stopping = True
        self.membership.stop_taking()
        for opened in list(self.opened):
            await self.commit(opened)
        with contextlib.suppress(RetriableError):
            await self.membership.release_all()
        self.end()


class Cluster:
    """The world the processes live in (a mixin of the state machine): clock, store, loop, checks."""

    def open_world(self, members: int, shards: int, phase: float, duration: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.duration = duration
        self.t = 0.0  # the virtual time; members' clocks and the server's follow it
        self.phase = phase
        self.mem = MemStore(lambda: EPOCH + phase + self.t)  # whole seconds tick at ``phase``
        self.mem.watchers.append(self.watch)
        self.shards = SHARDS[:shards]
        self.parked: list[Parked] = []
        self.marks = itertools.count(1)  # each commit's progress: later commits carry more
        self.names = itertools.count(1)
        self.violations: list[str] = []
        self.broken = False  # a check failed: the teardown checks nothing more
        self.last: dict[tuple[str, str], int] = {}  # (what, key) -> the highest value written
        self.owners: dict[tuple[str, int], str] = {}  # (lease key, generation) -> its owner
        self.every: list[Process] = []
        self.procs = [self.spawn(f"m{i}") for i in range(members)]

    def spawn(self, member: str) -> Process:
        process = Process(self, member, offset=1000.0 * len(self.every) + 0.25)
        self.every.append(process)
        self.settle()  # its TaskGroup is open
        return process

    def settle(self) -> None:
        """Run the loop until nothing can go on (what is left waits for a parked request)."""
        async def idle() -> None:
            for _ in range(100_000):
                await asyncio.sleep(0)
                if not self.loop._ready:  # type: ignore[attr-defined]
                    return
            raise AssertionError("the event loop never went idle")

        self.loop.run_until_complete(idle())
        for process in self.every:
            if process.host.done() and not process.host.cancelled() and process.host.exception():
                self.broken = True
                raise process.host.exception()  # type: ignore[misc]

    def run(self, process: Process, work: Coroutine[Any, Any, None]) -> None:
        assert process.tg is not None
        process.tg.create_task(work)
        self.settle()

    def alive(self) -> list[Process]:
        return [p for p in self.procs if not p.dead]

    def let_go(self, parked: list[Parked]) -> None:
        for one in parked:
            self.parked.remove(one)
            one.go.set_result(None)
        self.settle()

    def cadence(self, seconds: float, renewing: list[Process], rebalancing: list[Process]) -> None:
        """``seconds`` pass in ticks of the renew interval, each with a renewal and a rebalancing pass
        of the members named, checking after each tick."""
        while seconds > 0:
            tick = min(RENEW_INTERVAL, seconds)
            self.t += tick
            seconds -= tick
            for process in renewing:
                if not process.dead:
                    self.run(process, process.renew())
            for process in rebalancing:
                if not process.dead:
                    self.run(process, process.rebalance())
            self.check()

    def watch(self, bucket: str, key: str, stored: Stored | None) -> None:
        """Every write as it lands: generations and committed progress never go back."""
        if stored is None or not (key.startswith(CONTROL) or "/leases/" in key):
            return
        doc = orjson.loads(stored.body)
        if "/leases/" in key:
            generation = int(doc["generation"])
            self.monotonic("(d) lease generation", key, generation)
            owner = doc["owner"]
            if owner is not None and self.owners.setdefault((key, generation), owner) != owner:
                self.violations.append(f"(d) {key} names {owner} at generation {generation}, "
                                       f"which was {self.owners[(key, generation)]}'s")
        else:
            self.monotonic("(c) checkpoint's lease generation", key, int(doc["lease"]["generation"]))
            self.monotonic("(f) committed progress", key, int(doc["watermark_ms"]))

    def monotonic(self, what: str, key: str, value: int) -> None:
        before = self.last.get((what, key), value)
        if value < before:
            self.violations.append(f"{what} of {key} went from {before} to {value}")
        self.last[(what, key)] = max(value, before)

    # The checks.

    def believers(self, prefix: str) -> list[tuple[Process, Opened]]:
        return [(p, o) for p in self.alive() for o in p.believed() if o.prefix == prefix]

    def owners_of(self, prefix: str) -> list[str]:
        return [p.member for p, _ in self.believers(prefix)]

    def fence_accepts(self, opened: Opened) -> bool:
        """Would the checkpoint accept this opening's next commit (its ETag, or a body of its own)?"""
        fence = opened.checkpoints
        stored = self.mem.objects.get((BUCKET, fence.key))
        if stored is None:
            return fence._etag is None
        return fence._etag == stored.etag or stored.body in fence._unconfirmed

    def expect(self, ok: bool, problem: str) -> None:
        if not ok:
            self.broken = True
            raise AssertionError(problem)

    def check(self) -> None:
        """The invariants (a) to (f)."""
        self.expect(not self.violations, "; ".join(self.violations))
        for prefix in self.shards:
            accepted = [p.member for p, o in self.believers(prefix) if self.fence_accepts(o)]
            self.expect(len(accepted) <= 1, f"(a) {prefix} owned at once by {accepted}, each fence accepting")
            for process, opened in self.believers(prefix):
                stored = self.mem.objects.get((BUCKET, lease_key(GROUP, prefix)))
                doc = orjson.loads(stored.body) if stored else {}
                named = (doc.get("owner"), doc.get("generation"))
                self.expect(named == (process.member, opened.tenure.generation),
                            f"(b) {process.member} believes it owns {prefix} at generation "
                            f"{opened.tenure.generation}; the lease names {named}")
        for process in self.alive():
            prefixes = [o.prefix for o in process.opened]
            self.expect(len(prefixes) == len(set(prefixes)), f"(e) {process.member} has {prefixes} open")

    def converge(self) -> None:
        """The faults end; every live member renews and rebalances every 2 s for 40 s: then each shard
        has exactly one owner and each member holds its fair share."""
        for process in self.every:
            process.network.clear()
            process.paused = False
        while self.parked:
            self.let_go(list(self.parked))
        if not self.alive():
            self.procs[0] = self.spawn("m0")
        for _ in range(20):
            self.t += 2
            for process in self.alive():
                self.run(process, process.renew())
            for process in self.alive():
                self.run(process, process.rebalance())
            self.check()
        members = [p.member for p in self.alive()]
        for prefix in self.shards:
            owners = self.owners_of(prefix)
            self.expect(len(owners) == 1, f"{prefix} is owned by {owners} after the faults ended")
        for process in self.alive():
            share = fair_share(len(self.shards), members, process.member)
            self.expect(len(process.believed()) == len(process.membership.held) == share,
                        f"{process.member} holds {len(process.believed())}, its share is {share}")

    def close(self) -> None:
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()
