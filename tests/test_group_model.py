"""Model-based tests of consumer groups (Hypothesis stateful testing, pure, no server).

:class:`GroupModel` drives the simulated group of :mod:`tests.groupsim` (real
:class:`~s3stream.groups.membership.Membership` objects and
:class:`~s3stream.pipeline.checkpoint.S3CheckpointStore`
fences over the in-memory store of :mod:`tests.memstore`, on a virtual clock): members renew,
rebalance and commit; pause, crash, restart (under a new id or their own) and stop cleanly; time jumps
to the edges of leases; a member's pass is slow while the others go on; its requests land late, are
answered late, lose their answers or time out and land later (even after it crashed). After every
step the invariants of :class:`tests.groupsim.Cluster` hold, (a) to (f): never two owners of a shard
whose fences both accept; every owner named by the lease at its generation; generations and committed
progress never going back; no shard open twice in a process. At the end, with the faults over, every
shard has exactly one owner and the holdings are balanced.

The issue's cases are also played as fixed sequences of the same steps, each failing on the code
before its fix. The pure plan is checked alone in ``tests/test_plan_model.py``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import orjson
import pytest
import structlog
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.groupsim import BUCKET, EPOCH, Cluster, Process

DURATIONS = [10.0, 7.5]  # whole or not: the second of slack in is_live must cover both
SLOT = st.integers(0, 2)
SECONDS = st.integers(0, 150).map(lambda tenths: tenths / 10)  # 0 to 15 s
# What may happen to a request: it lands late; its answer comes late; its answer is lost; the sender
# times out at once while the request lands later.
FAULTS = st.sampled_from([None, "late", "slow-answer", "lost", "timeout"])
KINDS = st.sampled_from(["list", "lease", "checkpoint"])  # lease listings, lease and checkpoint writes


class GroupModel(Cluster, RuleBasedStateMachine):
    """Members of one group sharing the shards of one bucket, under faults, against the invariants."""

    @initialize(members=st.integers(2, 3), shards=st.integers(2, 3),
                phase=st.sampled_from([0.0, 0.4, 0.999]), duration=st.sampled_from(DURATIONS))
    def start(self, members: int, shards: int, phase: float, duration: float) -> None:
        self.open_world(members, shards, phase, duration)

    def proc(self, slot: int) -> Process | None:
        """The process in ``slot``, if it can take a step (alive, not paused)."""
        process = self.procs[slot % len(self.procs)]
        return None if process.dead or process.paused else process

    # Steps.

    @rule(seconds=SECONDS)
    def advance(self, seconds: float) -> None:
        """Time passes and nobody does anything (every member stalled at once)."""
        self.t += seconds

    @precondition(lambda self: any("/leases/" in key for _, key in self.mem.objects))
    @rule(data=st.data(), delta=st.integers(-20, 25).map(lambda tenths: tenths / 10))
    def to_the_edge(self, data: st.DataObject, delta: float) -> None:
        """Time jumps to about when a lease expires (``delta`` seconds after its LastModified plus the
        duration, both whole seconds on the server's clock), if that is ahead."""
        stamps = sorted({s.last_modified_ms for (_, key), s in self.mem.objects.items() if "/leases/" in key})
        stamp = data.draw(st.sampled_from(stamps))
        self.t = max(self.t, stamp / 1000 - EPOCH - self.phase + self.duration + delta)

    @rule(seconds=SECONDS, stalled=st.none() | SLOT)
    def go_on(self, seconds: float, stalled: int | None) -> None:
        """Time passes while the members follow their cadence (a renewal and a rebalancing every
        ``RENEW_INTERVAL``), except a ``stalled`` one (a long GC pause, a frozen VM)."""
        skip = None if stalled is None else self.procs[stalled % len(self.procs)]
        members = [p for p in self.alive() if p is not skip and not p.paused]
        self.cadence(seconds, members, members)

    @rule(slot=SLOT, stage=KINDS, seconds=SECONDS, stalled=st.booleans())
    def slow_pass(self, slot: int, stage: str, seconds: float, stalled: bool) -> None:
        """A member's rebalancing pass is slow at one stage (its listing of the leases answered late,
        its lease writes or its fences landing late) for ``seconds``, while the others follow their
        cadence; the member itself renews meanwhile, unless it is ``stalled`` altogether."""
        if not (process := self.proc(slot)):
            return
        before, healthy = list(self.parked), dict(process.network)
        process.network[stage] = "slow-answer" if stage == "list" else "late"
        self.run(process, process.rebalance())
        process.network = healthy
        mine = [p for p in self.parked if p not in before]
        others = [p for p in self.alive() if p is not process and not p.paused]
        self.cadence(seconds, others if stalled else [*others, process], others)
        self.let_go([p for p in mine if p in self.parked])

    @rule(slot=SLOT)
    def renew(self, slot: int) -> None:
        if process := self.proc(slot):
            self.run(process, process.renew())

    @rule(slot=SLOT)
    def rebalance(self, slot: int) -> None:
        if process := self.proc(slot):
            self.run(process, process.rebalance())

    @precondition(lambda self: any(p.believed() for p in self.alive() if not p.paused))
    @rule(slot=SLOT, data=st.data())
    def commit(self, slot: int, data: st.DataObject) -> None:
        """A member commits a shard it believes it owns."""
        if (process := self.proc(slot)) and (owned := process.believed()):
            self.run(process, process.commit(data.draw(st.sampled_from(owned))))

    @rule(slot=SLOT, what=KINDS, fault=FAULTS)
    def network(self, slot: int, what: str, fault: str | None) -> None:
        """From now on (until healed: ``fault`` None) the member's requests of one kind (listings of
        the leases, lease writes, checkpoint writes) land late, are answered late, lose their answers,
        or time out at once and land later."""
        process = self.procs[slot % len(self.procs)]
        process.network.pop(what, None)
        if fault is not None:
            process.network[what] = fault

    @rule(slot=SLOT, before=SECONDS, after=SECONDS, rebalancing=st.booleans())
    def slow_lease_writes(self, slot: int, before: float, after: float, rebalancing: bool) -> None:
        """Lease writes take time: ``before`` seconds until applied, ``after`` until answered."""
        if process := self.proc(slot):
            process.slow = (before, after)
            self.run(process, process.rebalance() if rebalancing else process.renew())
            process.slow = None

    @precondition(lambda self: self.parked)
    @rule(data=st.data())
    def land(self, data: st.DataObject) -> None:
        """A request held in the network goes on: it is applied, or its answer arrives."""
        self.let_go([self.parked[data.draw(st.integers(0, len(self.parked) - 1))]])

    @rule(slot=SLOT, event=st.sampled_from(["pause", "resume", "crash", "stop", "restart", "restart-own-id"]))
    def lifecycle(self, slot: int, event: str) -> None:
        """SIGSTOP / SIGCONT (a paused member takes no steps while time goes on); kill -9 (its requests
        in flight may still land); SIGTERM (the final commits while renewing, then the release); a
        restart under a new id or its configured one."""
        slot %= len(self.procs)
        process = self.procs[slot]
        if process.dead and event.startswith("restart"):
            member = f"m{slot}" if event == "restart-own-id" else f"m{slot}-{next(self.names)}"
            self.procs[slot] = self.spawn(member)
        elif not process.dead and event in ("pause", "resume"):
            process.paused = event == "pause"
        elif not process.dead and event == "crash":
            process.end()
            self.settle()
        elif not process.dead and not process.paused and not process.stopping and event == "stop":
            self.run(process, process.stop())

    @invariant()
    def protocol_holds(self) -> None:
        if hasattr(self, "loop"):
            self.check()

    def teardown(self) -> None:
        """Liveness: the faults end, everyone converges (unless a check already failed)."""
        if not hasattr(self, "loop"):
            return
        try:
            if not self.broken:
                self.converge()
        finally:
            self.close()


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    """Thousands of takeovers and drops per run: keep them out of the captured output."""
    before = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    yield
    structlog.configure(**before)


def test_group_protocol_under_faults() -> None:
    """Real memberships and fences, under crashes, pauses, restarts, clean stops and slow, late and
    unanswered requests: never two owners of a shard whose fences both accept, every owner named by
    the lease, generations and committed progress never going back; and once the faults end, one
    owner per shard and balanced holdings."""
    run_state_machine_as_test(GroupModel, settings=settings(max_examples=300, stateful_step_count=50,
                                                            deadline=None))


# The cases as fixed sequences of the same steps: each fails on the code before its fix.

def play(model: GroupModel, *steps: Callable[[], object]) -> None:
    for step in steps:
        step()
        model.check()


@contextlib.contextmanager
def machine(members: int, shards: int, *, phase: float = 0.0, duration: float = 10.0) -> Iterator[GroupModel]:
    """A model (the server's whole seconds ticking ``phase`` after the test's clock's), torn down at
    the end: the faults end and everyone converges."""
    model = GroupModel()
    model.start(members=members, shards=shards, phase=phase, duration=duration)
    try:
        yield model
    except BaseException:
        model.broken = True
        raise
    finally:
        model.teardown()


def test_a_renewal_landing_before_a_takeover_fails_it() -> None:
    """Lease ABA (issue case 3): m2 holds orders/0 but has not renewed for 12 s; m0 lists the lease as
    expired and sends its takeover, which lands only after m2 renewed. The renewal changed the ETag, so
    the takeover fails and m2 alone owns the shard (with identical renewal bodies both would)."""
    with machine(3, 2) as model:
        play(model, lambda: model.rebalance(2), lambda: model.advance(12.0),
             lambda: model.network(0, "lease", "late"), lambda: model.rebalance(0), lambda: model.renew(2),
             lambda: model.let_go(list(model.parked)))
        assert model.owners_of("orders/0/") == ["m2"]


def test_a_lease_renewed_between_listing_and_reading_is_live() -> None:
    """m0's listing shows m2's lease expired, but its answer comes late: m2 renews meanwhile. The body
    m0 then reads has another ETag than the one listed, so m0 counts the lease live and leaves it."""
    with machine(3, 2) as model:
        play(model, lambda: model.rebalance(2), lambda: model.advance(12.0),
             lambda: model.network(0, "list", "slow-answer"), lambda: model.rebalance(0),
             lambda: model.renew(2), lambda: model.let_go(list(model.parked)))
        assert model.owners_of("orders/0/") == ["m2"]


def test_a_late_fence_never_displaces_a_later_generation() -> None:
    """Fences ordered by generation (issue case 5): m0 takes both shards but its fences are slow; its
    leases lapse, m1 takes them at generation 2 and fences; m0's fences land after: they find a later
    generation and give the leases back, instead of fencing m1 out."""
    with machine(2, 2) as model:
        play(model, lambda: model.network(0, "checkpoint", "late"), lambda: model.rebalance(0),
             lambda: model.advance(12.0), lambda: model.rebalance(1),
             lambda: model.let_go(list(model.parked)))
        assert len(model.procs[1].opened) == 2
        for opened in model.procs[1].opened:
            assert model.owners_of(opened.prefix) == ["m1"]
            fence = model.mem.objects[(BUCKET, opened.checkpoints.key)]
            assert orjson.loads(fence.body)["lease"] == {"owner": "m1", "generation": 2}


def test_a_shard_being_given_up_is_not_taken_back() -> None:
    """Re-acquire while releasing (issue case 4): m0 gives a shard up to a newcomer, its handover
    commit slow; the newcomer crashes and m0's share grows back meanwhile. m0 takes the shard back only
    once its release is written, so it never has it open twice."""
    with machine(2, 2) as model:
        play(model, lambda: model.renew(0), lambda: model.rebalance(0), lambda: model.renew(1),
             lambda: model.network(0, "checkpoint", "late"), lambda: model.rebalance(0),
             lambda: model.lifecycle(1, "crash"), lambda: model.advance(12.0), lambda: model.renew(0),
             lambda: model.rebalance(0))
        held = model.procs[0].membership.held
        assert len(held) == 2
        assert sum(h.releasing for h in held.values()) == 1


def test_a_tenure_counts_from_the_send_of_the_write() -> None:
    """Ownership by tenure: m0's takes are applied at once but answered 13 s later, then m0 renews
    orders/0 with an answer 13 s late again. Each tenure runs from the send, so it has ended when the
    answer arrives, and m1, finding the leases expired, is the only owner."""
    with machine(2, 2) as model:
        play(model, lambda: model.network(0, "lease", "slow-answer"), lambda: model.rebalance(0),
             lambda: model.advance(13.0), lambda: model.let_go(list(model.parked)))
        assert model.owners_of("orders/0/") == model.owners_of("orders/1/") == []
        play(model, lambda: model.renew(0), lambda: model.advance(13.0),
             lambda: model.let_go(list(model.parked)), lambda: model.rebalance(1))
        assert model.owners_of("orders/0/") == model.owners_of("orders/1/") == ["m1"]


def test_whole_seconds_never_end_a_lease_early() -> None:
    """LastModified and the server's time are truncated to whole seconds: m0's takes land at .9 of a
    second (stamped at its start) and m1 looks 7.2 s later, the server's clock showing 8 s since.
    m0's 7.5 s tenure still holds, so the lease must still count as live: the second of slack."""
    with machine(2, 2, phase=0.9, duration=7.5) as model:
        play(model, lambda: model.rebalance(0), lambda: model.advance(7.2), lambda: model.rebalance(1))
        assert model.owners_of("orders/0/") == model.owners_of("orders/1/") == ["m0"]


def test_a_stale_commits_conflict_forfeits_only_its_own_holding() -> None:
    """m0's commit of orders/0 is in flight when m0 loses the shard (m1 takes it after m0 stalled, then
    stops cleanly); m0 takes it again at generation 3; then the old commit lands and meets m1's fence.
    That conflict concerns the old holding only: m0's holding at generation 3 must stay, and the shard
    must never be open twice in m0."""
    with machine(2, 2) as model:
        m0 = model.procs[0]
        play(model, lambda: model.rebalance(0), lambda: model.network(0, "checkpoint", "late"),
             lambda: model.run(m0, m0.commit(next(o for o in m0.opened if o.prefix == "orders/0/"))),
             lambda: model.network(0, "checkpoint", None), lambda: model.advance(12.0),
             lambda: model.rebalance(1), lambda: model.renew(0), lambda: model.lifecycle(1, "stop"),
             lambda: model.rebalance(0), lambda: model.let_go(list(model.parked)))
        assert model.owners_of("orders/0/") == ["m0"]
        play(model, lambda: model.rebalance(0))
