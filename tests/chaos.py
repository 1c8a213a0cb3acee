"""Chaos for consumer groups, the pure part: the nemesis's seeded schedule, the history a run records,
and checkers over that history (processes and proxies: :mod:`tests.chaos_nemesis`; the producer and
the test: tests/test_group_chaos.py).

**History.** Everything runs on one machine, so every record carries ``time.time()`` of one clock:

* :class:`Call`: one handler call, from the lines :mod:`tests.chaos_handler` writes, ``start`` before
  the handler sleeps and ``end`` after. A call cut by ``kill -9`` has no end; it is taken to end at
  that kill (or, if its process was not killed, when its process ended).
* :class:`Event`: what the nemesis did, with its window: ``kill`` (SIGKILL; the window is the
  instant), ``pause`` (SIGSTOP .. SIGCONT), ``fault`` (the member's lease writes failing on its own
  proxy), ``term`` (SIGTERM .. exit, with the exit code), ``start`` (a process started), ``exit`` (a
  process ended without being asked to), ``skip`` (a planned step not taken: its member was busy).
* :class:`LeaseWrite`: every lease write a member's proxy forwarded and the server accepted: which
  member wrote it, what it says (owner, generation), and when the proxy got the answer, before the
  member did. Sorted by that time, one shard's writes are its lease's history (each write's
  ``If-Match`` names the one before, so the server applied them in that order).
* :class:`Ack`: a write the producer saw acknowledged: key, sequence number, version id.

**Unclean windows.** ``kill``, ``pause`` and ``fault`` are unclean; ``term`` and rebalancing are
clean. A call ``c`` of member M is *covered* by an unclean window ``[w0, w1]`` of M when ``c`` was
already running as the window began, or (for a fault) began while M could still hold its lease:

* pause: ``c.start <= w0 + EPS`` and ``c.end >= w0``: SIGSTOP froze the handler mid-call, and it
  ended after SIGCONT. A call started after SIGCONT is not covered, however soon: once the pause has
  outlasted the lease the member owns nothing and must hand nothing more to its handlers.
* kill: ``c.start <= w0 <= c.end``: the call SIGKILL cut.
* fault: ``c.start <= min(w1, w0 + lease) + EPS`` and ``c.end >= w0``: a call begun while the
  renewal the member sent before the fault could still hold its lease.

``EPS`` (50 ms) absorbs the gap between the nemesis reading the clock and the signal landing.

**Checkers** (each returns a list of violations, one readable line each):

1. :func:`check_delivered`: every acknowledged (key, version) had a completed handler call.
2. :func:`check_order`: per key, the first calls of its versions started in the producer's order.
3. :func:`check_exclusive`: no two processes ran calls of one shard at overlapping times, unless one
   of the two calls is covered by an unclean window of its own member (the previous holder was
   frozen or killed mid-call, or its lease writes were failing).
   :func:`check_leases`: no call started on a shard while the lease's last accepted write named
   another member or nobody (taken over or released): a member that lost or gave up its lease hands
   nothing more of that shard to its handlers. No window excuses this (a call begun before a pause
   started before the takeover too); it catches a zombie even when its calls and the new owner's
   happen not to overlap.
4. :func:`check_duplicates`: each further call of a (key, version) must follow an unclean window of
   the member that made the previous call, between that call's start and the redelivery; after only
   clean events (SIGTERM handover, rebalancing) a redelivery is a violation. Redeliveries that are
   explained are bounded by ``per_unclean`` per unclean event.
5. :func:`check_exits`: every SIGTERM ended in exit code 0, and no member ended unasked.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

EPS = 0.05
LOOKBACK = 10.0  # seconds of events before a violation that its message recounts
UNCLEAN = frozenset({"kill", "pause", "fault"})


@dataclass(frozen=True, slots=True)
class Call:
    """One handler call; ``end`` is None when the process died inside it."""

    member: str
    pid: int
    shard: str
    key: str
    version: str
    body: str
    start: float
    end: float | None = None
    done: bool = True  # returned normally (not cancelled at the end of a grace period)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing the nemesis (or the test) did to a member, and when."""

    kind: str
    member: str
    start: float
    end: float
    pid: int = 0
    detail: str = ""
    code: int | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """A write the producer saw acknowledged."""

    key: str
    seq: int
    version: str
    at: float


@dataclass(frozen=True, slots=True)
class LeaseWrite:
    """A lease write the server accepted, as the writer's proxy saw it."""

    at: float
    writer: str
    shard: str
    owner: str | None
    generation: int


@dataclass
class History:
    """Everything a run recorded; ``t0`` is the wall time messages are reported relative to."""

    t0: float
    lease: float
    calls: list[Call] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    leases: list[LeaseWrite] = field(default_factory=list)

    def rel(self, t: float | None) -> str:
        return "never" if t is None else f"{t - self.t0:.3f}s"

    def end_of(self, call: Call) -> float:
        """When a call ended: its end line, else the kill or exit of its process, else never."""
        if call.end is not None:
            return call.end
        ends = [e.start if e.kind == "kill" else e.end for e in self.events
                if e.pid == call.pid and e.kind in ("kill", "exit", "term") and e.end >= call.start]
        return min(ends, default=float("inf"))

    def unclean(self, member: str) -> list[Event]:
        return [e for e in self.events if e.member == member and e.kind in UNCLEAN]

    def covered(self, call: Call) -> Event | None:
        """The unclean window of the call's own member that explains the call running long, if any."""
        end = self.end_of(call)
        for event in self.unclean(call.member):
            if event.kind == "pause" and call.start <= event.start + EPS and end >= event.start:
                return event
            if event.kind == "kill" and call.start <= event.start <= end:
                return event
            if event.kind == "fault" and end >= event.start and (
                    call.start <= min(event.end, event.start + self.lease) + EPS):
                return event
        return None

    def describe(self, call: Call) -> str:
        """``m1(pid 7) orders/00/k03#12 [1.000s..1.010s]``: ``#12`` is the producer's sequence number
        (from the body), which tells versions apart better than ids sharing long prefixes."""
        seq = call.body.rpartition(":")[2]
        span = f"[{self.rel(call.start)}..{self.rel(call.end)}]"
        return f"{call.member}(pid {call.pid}) {call.key}#{seq} {span}"

    def lease_moves(self, shard: str, since: float, until: float) -> str:
        """The lease's changes of owner or generation on ``shard`` between two times."""
        moves, last = [], None
        for w in sorted(self.leases, key=lambda w: w.at):
            if w.shard == shard and (w.owner, w.generation) != last:
                last = (w.owner, w.generation)
                if since < w.at <= until:
                    moves.append(f"{w.owner or 'released'} g{w.generation} at {self.rel(w.at)}")
        return f"lease of {shard}: " + (", ".join(moves) if moves else "unchanged")

    def to_json(self) -> bytes:
        return orjson.dumps({"t0": self.t0, "lease": self.lease, "calls": self.calls, "events": self.events,
                             "acks": self.acks, "leases": self.leases}, option=orjson.OPT_INDENT_2)

    def around(self, members: Iterable[str], since: float, until: float) -> str:
        """What happened to these members between two times, for a violation's message."""
        names = set(members)
        seen = [f"{e.kind} of {e.member} " + (f"at {self.rel(e.start)}" if e.end - e.start < 0.01 else
                                               f"{self.rel(e.start)}..{self.rel(e.end)}")
                for e in sorted(self.events, key=lambda e: e.start)
                if e.member in names and e.kind != "skip" and e.end >= since and e.start <= until]
        return "; ".join(seen) if seen else "nothing done to them"


def read_calls(paths: Iterable[Path]) -> list[Call]:
    """The calls recorded in handler output files; a line cut short by kill -9 is skipped."""
    starts: dict[tuple[int, int], dict[str, Any]] = {}
    ends: dict[tuple[int, int], tuple[float, bool]] = {}
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_bytes().splitlines():
            try:
                doc = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            ident = (int(doc["pid"]), int(doc["n"]))
            if doc["ev"] == "start":
                starts[ident] = doc
            elif doc["ev"] == "end":
                ends[ident] = (float(doc["t"]), bool(doc["ok"]))
    calls = []
    for ident, d in starts.items():
        end, done = ends.get(ident, (None, False))
        calls.append(Call(member=d["m"], pid=ident[0], shard=d["shard"], key=d["key"], version=d["vid"],
                          body=d["body"], start=float(d["t"]), end=end, done=done))
    return sorted(calls, key=lambda c: c.start)


def lost_acks(h: History) -> list[Ack]:
    """The acknowledged writes without a completed call, in acknowledgement order."""
    done = {(c.key, c.version) for c in h.calls if c.done}
    return [a for a in h.acks if (a.key, a.version) not in done]


def check_delivered(h: History) -> list[str]:
    """Every acknowledged write has a completed call."""
    return [f"lost: {a.key} seq {a.seq} version {a.version} (acknowledged at {h.rel(a.at)}) "
            "never completed a handler call" for a in lost_acks(h)]


def check_order(h: History) -> list[str]:
    """Per key, the first calls of its acknowledged versions are in the order they were written."""
    seq_of = {(a.key, a.version): a.seq for a in h.acks}
    first: dict[tuple[str, str], Call] = {}
    for call in h.calls:  # sorted by start
        first.setdefault((call.key, call.version), call)
    by_key: dict[str, list[tuple[int, Call]]] = defaultdict(list)
    for ident, call in first.items():
        if ident in seq_of:
            by_key[call.key].append((seq_of[ident], call))
    out = []
    for key, pairs in sorted(by_key.items()):
        pairs.sort(key=lambda p: p[1].start)
        highest: tuple[int, Call] | None = None
        for seq, call in pairs:
            if highest is not None and seq < highest[0]:
                out.append(f"order: {key} seq {seq} first ran at {h.rel(call.start)} on {call.member}, "
                           f"after seq {highest[0]} at {h.rel(highest[1].start)} on {highest[1].member}")
            if highest is None or seq > highest[0]:
                highest = (seq, call)
    return out


def check_exclusive(h: History) -> list[str]:
    """No two processes run one shard's calls at once, outside their members' unclean windows."""
    by_shard: dict[str, list[Call]] = defaultdict(list)
    for call in h.calls:
        by_shard[call.shard].append(call)
    out = []
    for shard, calls in sorted(by_shard.items()):
        for i, late in enumerate(calls):  # sorted by start: pair each call with earlier ones still running
            for early in calls[:i]:
                if early.pid == late.pid or h.end_of(early) < late.start:
                    continue
                if h.covered(early) or h.covered(late):
                    continue
                out.append(f"two owners: shard {shard}: {h.describe(late)} started while "
                           f"{h.describe(early)} was running; no kill, pause or lease fault of "
                           f"{early.member} or {late.member} explains it")
                break
    return out


def check_leases(h: History) -> list[str]:
    """No call starts on a shard whose lease was last written naming another member, or nobody."""
    writes: dict[str, list[LeaseWrite]] = defaultdict(list)
    for write in sorted(h.leases, key=lambda w: w.at):
        writes[write.shard].append(write)
    out = []
    for call in h.calls:
        history = writes.get(call.shard, [])
        i = next((i for i in range(len(history) - 1, -1, -1) if history[i].at <= call.start), None)
        if i is None or history[i].owner == call.member:
            continue
        last = history[i]
        while i > 0 and (history[i - 1].owner, history[i - 1].generation) == (last.owner, last.generation):
            i -= 1  # back to the write that gave the lease to this owner and generation
        named = f"{last.owner}'s (generation {last.generation})" if last.owner else "released"
        recent = h.around([call.member], history[i].at - LOOKBACK, call.start)
        out.append(f"zombie: shard {call.shard}: {h.describe(call)} started when the lease had been "
                   f"{named} since {h.rel(history[i].at)} ({recent})")
    return out


def _explains(h: History, previous: Call, again: Call) -> Event | None:
    """The unclean window of the previous call's member, between that call and the redelivery."""
    return next((e for e in h.unclean(previous.member)
                 if e.start <= again.start and e.end >= previous.start), None)


def duplicates(h: History) -> list[tuple[Call, Call, Event | None]]:
    """Every call of a (key, version) after its first: (previous call, this one, what explains it)."""
    seen: dict[tuple[str, str], Call] = {}
    out = []
    for call in h.calls:
        ident = (call.key, call.version)
        if ident in seen:
            out.append((seen[ident], call, _explains(h, seen[ident], call)))
        seen[ident] = call
    return out


def check_duplicates(h: History, per_unclean: int) -> list[str]:
    """Redeliveries only after unclean events of the previous deliverer, and at most ``per_unclean``
    of them per unclean event."""
    found = duplicates(h)
    out = [f"redelivered: {h.describe(again)} after {h.describe(prev)}, with no kill, pause or lease "
           f"fault of {prev.member} in between "
           f"({h.around({prev.member, again.member}, prev.start - LOOKBACK, again.start)}; "
           f"{h.lease_moves(again.shard, prev.start, again.start)})"
           for prev, again, why in found if why is None]
    explained = sum(why is not None for _, _, why in found)
    unclean = sum(1 for e in h.events if e.kind in UNCLEAN)
    if explained > per_unclean * unclean:
        out.append(f"too many redeliveries: {explained} for {unclean} unclean events "
                   f"(bound {per_unclean} each)")
    return out


def check_exits(h: History) -> list[str]:
    """SIGTERM exits 0; no member dies unasked."""
    out = [f"exit: {e.member}(pid {e.pid}) exited with {e.code} after SIGTERM at {h.rel(e.start)}"
           if e.code is not None else
           f"exit: {e.member}(pid {e.pid}) still ran {e.end - e.start:.0f}s after SIGTERM at {h.rel(e.start)}"
           for e in h.events if e.kind == "term" and e.code != 0]
    out += [f"exit: {e.member}(pid {e.pid}) exited on its own with {e.code} at {h.rel(e.start)}"
            for e in h.events if e.kind == "exit"]
    return out


def handovers(h: History) -> int:
    """How often a shard's calls moved from one process to another."""
    last: dict[str, int] = {}
    moves = 0
    for call in h.calls:
        if call.shard in last and last[call.shard] != call.pid:
            moves += 1
        last[call.shard] = call.pid
    return moves


def summary(seed: int, h: History) -> str:
    kinds = Counter(e.kind for e in h.events)
    found = duplicates(h)
    why = Counter(w.kind if w else "no unclean event" for _, _, w in found)
    return (f"chaos seed {seed}: events {dict(sorted(kinds.items()))}; acknowledged {len(h.acks)}, "
            f"handler calls {len(h.calls)} ({sum(c.end is None for c in h.calls)} cut); "
            f"lease writes {len(h.leases)}; "
            f"redeliveries {len(found)} after {dict(sorted(why.items()))}; handovers {handovers(h)}")


def report(seed: int, violations: dict[str, list[str]], first: int = 6) -> str:
    """The failure message: each checker's violations (the first few), and how to replay."""
    lines = [f"chaos seed {seed} (replay: S3STREAM_CHAOS_SEED={seed}):"]
    for name, found in violations.items():
        if found:
            lines.append(f"  {name}: {len(found)} violation(s)")
            lines += [f"    - {v}" for v in found[:first]]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Planned:
    """One nemesis step: at ``at`` s into the phase, do ``kind`` to member ``target`` for ``length`` s
    (a pause's or a fault's length, or the downtime before a restart)."""

    at: float
    kind: str
    target: int
    length: float
    fault: str = ""
    delay: float = 0.0

    def busy_for(self) -> float:
        """A generous bound on how long the member is affected (a restart and a drain take time)."""
        return self.length + {"kill": 3.0, "pause": 1.0, "term": 12.0, "fault": self.delay + 1.0}[self.kind]


def plan(rng: random.Random, members: int, seconds: float, lease: float) -> list[Planned]:
    """The nemesis's schedule, from the seed alone: a step every 0.5-2.5 s on a member not already
    affected, never more than ``members - 1`` affected at once, so one always runs untouched."""
    steps: list[Planned] = []
    busy_until = [0.0] * members
    at = rng.uniform(1.0, 3.0)
    while at < seconds:
        kind = rng.choices(("kill", "pause", "term", "fault"), weights=(3, 3, 2, 3))[0]
        free = [i for i, until in enumerate(busy_until) if until <= at]
        target = rng.choice(free) if free else 0
        if kind == "pause":
            length = rng.uniform(0.5, lease - 1) if rng.random() < 0.2 else rng.uniform(lease + 1, lease + 5)
            step = Planned(at, kind, target, length)
        elif kind == "fault":
            fault = rng.choice(("503", "delay", "drop"))
            step = Planned(at, kind, target, rng.uniform(1.5, 8.0), fault,
                           rng.uniform(1.0, 5.0) if fault == "delay" else 0.0)
        else:
            step = Planned(at, kind, target, rng.uniform(0.5, 4.0))
        if len(free) >= 2:  # the target and one more: someone stays untouched throughout
            steps.append(step)
            busy_until[target] = at + step.busy_for()
        at += rng.uniform(0.5, 2.5)
    return steps
