"""Model-based tests of the pure lease plan (:func:`s3stream.groups.lease.plan`, Hypothesis, no I/O).

* :func:`test_plan_against_its_specification`: for any lease table, holding and shards being released,
  one pass never takes another member's live lease, nor a shard held or being released; releases only
  held shards; takes as many as it needs and can, its own leases first; and the members' targets add
  up to the shard count, each ⌊S/N⌋ or ⌈S/N⌉.
* :class:`PlanModel`: members plan over one shared lease table from looks that may be stale, take by
  compare-and-swap on the version they saw (an ETag), release in two phases (decided, then written),
  join, leave and crash (a crashed member's leases stay live until an ``expire`` step). No shard is
  ever held by two members, or held and released by one; once the members just plan and release for
  a few rounds, each shard has one holder and the holdings are balanced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from s3stream.groups.lease import LeaseView, fair_share, plan

SHARDS = [f"topic/{i}/" for i in range(6)]
MEMBERS = ["a", "b", "c", "d", "e", "f"]


@st.composite
def situations(draw: st.DrawFn) -> tuple[str, list[str], list[str], dict[str, LeaseView], set[str],
                                         frozenset[str]]:
    shards = draw(st.lists(st.sampled_from(SHARDS), min_size=1, unique=True))
    me = draw(st.sampled_from(MEMBERS[:4]))
    members = draw(st.lists(st.sampled_from(MEMBERS[:4]), unique=True))  # with or without me
    views = {}
    for shard in shards:
        if draw(st.booleans()):  # else: no lease object yet
            owner = draw(st.sampled_from([None, *MEMBERS[:4], "gone"]))
            etag = draw(st.sampled_from([None, f"etag-{shard}"]))
            views[shard] = LeaseView(shard, owner, draw(st.integers(0, 3)), etag,
                                     owner is not None and draw(st.booleans()))
    held = set(draw(st.lists(st.sampled_from(shards), unique=True)))
    rest = [s for s in shards if s not in held]
    releasing = frozenset(draw(st.lists(st.sampled_from(rest), unique=True)) if rest else [])
    return me, members, shards, views, held, releasing


@settings(max_examples=400, deadline=None)
@given(situations())
def test_plan_against_its_specification(
        situation: tuple[str, list[str], list[str], dict[str, LeaseView], set[str], frozenset[str]]) -> None:
    """One pass of the plan keeps to its specification, whatever the views, holding and releases."""
    me, members, shards, views, held, releasing = situation
    decided = plan(me, members, shards, views, held, releasing)
    everyone = sorted({*members, me})
    shares = {m: fair_share(len(shards), everyone, m) for m in everyone}
    assert sum(shares.values()) == len(shards)
    assert set(shares.values()) <= {len(shards) // len(everyone), -(-len(shards) // len(everyone))}
    target = fair_share(len(shards), members, me)
    assert target == shares[me]
    taken = [v.shard for v in decided.acquire]
    assert len(set(taken)) == len(taken)
    assert len(set(decided.release)) == len(decided.release)
    assert set(decided.release) <= held
    for view in decided.acquire:
        seen = views.get(view.shard)
        assert view.shard in shards
        assert view.shard not in held
        assert view.shard not in releasing
        assert seen is None or seen.free or seen.owner == me, f"took {seen}, a live lease of another"
        assert view == (seen or LeaseView(view.shard, None, 0, None, False))
    eligible = [s for s in shards if s not in held and s not in releasing
                and (s not in views or views[s].free or views[s].owner == me)]
    if len(held) > target:
        assert len(decided.release) == len(held) - target
        assert not decided.acquire
        return
    assert not decided.release
    assert len(taken) == min(target - len(held), len(eligible))
    mine = {s for s in eligible if s in views and views[s].owner == me}
    assert set(taken) <= mine if len(mine) >= len(taken) else mine <= set(taken), "own leases come first"


@dataclass
class Lease:
    owner: str | None
    generation: int
    version: int  # changes at every write: the ETag
    live: bool  # renewed by its holder (False once released, or once its owner stopped renewing it)


@dataclass
class Holder:
    held: set[str] = field(default_factory=set)
    releasing: set[str] = field(default_factory=set)  # decided, not yet written
    seen: dict[str, LeaseView] = field(default_factory=dict)  # its last look at the table


class PlanModel(RuleBasedStateMachine):
    """Members planning over one lease table; a lease is live while its owner is a member."""

    @initialize(shards=st.integers(1, 6), members=st.integers(1, 4))
    def start(self, shards: int, members: int) -> None:
        self.shards = SHARDS[:shards]
        self.table: dict[str, Lease] = {}
        self.members = {name: Holder() for name in MEMBERS[:members]}

    def views(self) -> dict[str, LeaseView]:
        return {s: LeaseView(s, lease.owner, lease.generation, str(lease.version), lease.live)
                for s, lease in self.table.items()}

    def write(self, shard: str, owner: str | None, generation: int) -> None:
        before = self.table.get(shard)
        self.table[shard] = Lease(owner, generation, before.version + 1 if before else 1, owner is not None)

    def pick(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.members)))

    @rule(data=st.data())
    def look(self, data: st.DataObject) -> None:
        self.members[self.pick(data)].seen = self.views()

    @rule(data=st.data(), fresh=st.booleans())
    def one_acts(self, data: st.DataObject, fresh: bool) -> None:
        self.act(self.pick(data), fresh=fresh)

    def act(self, me: str, *, fresh: bool) -> None:
        """Plan from the last look (or a ``fresh`` one); take by compare-and-swap on the version seen."""
        holder = self.members[me]
        if fresh:
            holder.seen = self.views()
        decided = plan(me, list(self.members), self.shards, holder.seen, set(holder.held),
                       frozenset(holder.releasing))
        for shard in decided.release:
            holder.held.remove(shard)
            holder.releasing.add(shard)
        for view in decided.acquire:
            current = self.table.get(view.shard)
            if (str(current.version) if current else None) == view.etag:
                self.write(view.shard, me, view.generation + 1)
                holder.held.add(view.shard)

    @rule(data=st.data())
    def everyone_acts(self, data: st.DataObject) -> None:
        """Every member plans from a fresh look, in an order of their own, releases left pending."""
        for me in data.draw(st.permutations(sorted(self.members))):
            self.act(me, fresh=True)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        holder = self.members[me := self.pick(data)]
        if holder.releasing:
            shard = data.draw(st.sampled_from(sorted(holder.releasing)))
            assert self.table[shard].owner == me
            self.write(shard, None, self.table[shard].generation)
            holder.releasing.remove(shard)

    @rule(data=st.data(), clean=st.booleans())
    def leave(self, data: st.DataObject, clean: bool) -> None:
        """A member stops (releasing everything) or crashes (its leases live on until they expire)."""
        if len(self.members) > 1:
            holder = self.members.pop(me := self.pick(data))
            for shard in holder.held | holder.releasing if clean else ():
                if self.table[shard].owner == me:
                    self.write(shard, None, self.table[shard].generation)

    @rule()
    def expire(self) -> None:
        """A lease duration passes: leases nobody renews (their owner crashed) are no longer live."""
        for shard, lease in self.table.items():
            holder = self.members.get(lease.owner or "")
            lease.live = holder is not None and shard in holder.held | holder.releasing

    @precondition(lambda self: len(self.members) < len(MEMBERS))
    @rule(data=st.data())
    def join(self, data: st.DataObject) -> None:
        """A member starts (a new one, or one that left: its leases may still name it)."""
        self.members[data.draw(st.sampled_from([m for m in MEMBERS if m not in self.members]))] = Holder()

    @invariant()
    def one_holder_per_shard(self) -> None:
        for me, holder in self.members.items():
            assert not holder.held & holder.releasing, f"{me} takes back what it releases"
            for shard in holder.held | holder.releasing:
                assert self.table[shard].owner == me, f"{me} holds {shard}, the lease names another"
        holding = [s for h in self.members.values() for s in h.held | h.releasing]
        assert len(holding) == len(set(holding)), f"a shard held twice: {sorted(holding)}"

    def teardown(self) -> None:
        """Rounds of look, plan and release by every member: one holder per shard, balanced."""
        if not hasattr(self, "members"):
            return
        self.expire()
        for holder in self.members.values():
            for shard in holder.releasing:
                self.write(shard, None, self.table[shard].generation)
            holder.releasing.clear()
        for _ in range(6):
            for me, holder in self.members.items():
                holder.seen = self.views()
                decided = plan(me, list(self.members), self.shards, holder.seen, set(holder.held),
                               frozenset(holder.releasing))
                for shard in decided.release:
                    holder.held.remove(shard)
                    self.write(shard, None, self.table[shard].generation)
                for view in decided.acquire:
                    self.write(view.shard, me, view.generation + 1)
                    holder.held.add(view.shard)
                self.one_holder_per_shard()
        for me, holder in self.members.items():
            assert len(holder.held) == fair_share(len(self.shards), list(self.members), me)
        assert sorted(s for h in self.members.values() for s in h.held) == sorted(self.shards)


def test_plan_converges_over_a_shared_table() -> None:
    """Members planning from stale looks, taking by compare-and-swap and releasing in two phases never
    hold a shard twice, and end with one holder per shard, balanced."""
    run_state_machine_as_test(PlanModel, settings=settings(max_examples=500, stateful_step_count=40,
                                                           deadline=None))
