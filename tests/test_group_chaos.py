"""Consumer groups under a seeded nemesis, checked Jepsen-style (see :mod:`tests.chaos`).

Three ``s3stream consume`` processes share a six-shard topic, each through its own fault proxy, which
also records every lease write the server accepted. A producer writes versions of 30 keys straight to
the server (15 a second on moto, whose version listings slow down with every version; 40 on
SeaweedFS) while the nemesis kills (-9), pauses (SIGSTOP, mostly past the lease), stops (SIGTERM)
and restarts members, and fails one member's lease writes for a while (503, dropped connections,
delays). The handler takes 5-20 ms, and now and then 4-8 s, so drains, handovers and pauses meet
calls in flight. Afterwards the history is checked: everything acknowledged delivered, first
deliveries in order per key, one owner per shard outside the crash windows, no call started by a
member after its lease passed on, redeliveries only after unclean events, clean exits.

The seed comes from ``S3STREAM_CHAOS_SEED`` or is drawn; it is printed and named in every failure,
so ``S3STREAM_CHAOS_SEED=N pytest tests/test_group_chaos.py`` replays the same schedule (timings on a
real machine vary, so a replay is likely, not certain, to fail the same way). Each run keeps its
history (``history.json``) and the members' logs in its temporary directory, printed at the end. The
checkers are also tested here on small hand-made histories, which need no server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from s3stream.config import build_settings
from s3stream.errors import NotFound
from s3stream.groups.membership import group_prefix, member_key
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import create_topic
from s3stream.s3.keys import key_versions
from s3stream.s3.store import Store
from tests.chaos import (
    Ack,
    Call,
    Event,
    History,
    LeaseWrite,
    check_delivered,
    check_duplicates,
    check_exclusive,
    check_exits,
    check_leases,
    check_order,
    lost_acks,
    plan,
    read_calls,
    report,
    summary,
)
from tests.chaos_nemesis import CONCURRENCY, Nemesis, Node
from tests.conftest import wait_until

SHARDS = 6
KEYS = 30
LEASE = 3.0
NEMESIS_SECONDS = 60.0
RATES = {"moto": 15.0, "seaweedfs": 40.0}  # messages per second: moto's version listings keep up with ~900
BURST = 3  # written together: a steady stream keeps work in flight whenever the nemesis strikes
RECOVERY_SECONDS = 60.0
PIDS = {"m1": 101, "m2": 102, "m3": 103}


def chaos_seed() -> int:
    """``S3STREAM_CHAOS_SEED`` if set, else a fresh one."""
    value = os.environ.get("S3STREAM_CHAOS_SEED")
    return int(value) if value else random.SystemRandom().randrange(1_000_000)


def call(member: str, start: float, end: float | None = None, *, key: str = "orders/00/k00",
         version: str = "v1", pid: int | None = None, done: bool = True) -> Call:
    """A hand-made handler call of 10 ms unless told otherwise."""
    return Call(member, pid or PIDS[member], key.rsplit("/", 1)[0] + "/", key, version, f"{key}:0", start,
                start + 0.01 if end is None and done else end, done)


def history(calls: list[Call], events: list[Event] | None = None, acks: list[Ack] | None = None) -> History:
    return History(t0=0.0, lease=LEASE, calls=sorted(calls, key=lambda c: c.start), events=events or [],
                   acks=acks or [])


def test_delivered_needs_a_completed_call_for_every_acknowledged_write() -> None:
    """A version whose only call was cut by kill -9 (or cancelled) counts as lost; completed, it does
    not."""
    acks = [Ack("orders/00/k00", 0, "v1", 1.0), Ack("orders/00/k00", 1, "v2", 2.0)]
    cut = call("m1", 3.0, version="v2", done=False)
    found = check_delivered(history([call("m1", 2.5), cut], acks=acks))
    assert len(found) == 1
    assert "seq 1 version v2" in found[0]
    assert not check_delivered(history([call("m1", 2.5), cut, call("m2", 9.0, version="v2")], acks=acks))


def test_order_flags_a_key_whose_first_deliveries_overtake_and_allows_redeliveries() -> None:
    """seq 1 handled before seq 0 is flagged; in order, with seq 0 redelivered after seq 1, is not."""
    acks = [Ack("orders/00/k00", 0, "v1", 1.0), Ack("orders/00/k00", 1, "v2", 2.0)]
    found = check_order(history([call("m2", 3.0, version="v2"), call("m1", 4.0, version="v1")], acks=acks))
    assert len(found) == 1
    assert "seq 0" in found[0]
    assert "after seq 1" in found[0]
    good = [call("m1", 3.0, version="v1"), call("m1", 4.0, version="v2"), call("m2", 9.0, version="v1")]
    assert not check_order(history(good, acks=acks))


def test_exclusive_flags_two_processes_running_one_shard_at_once() -> None:
    """Overlapping calls of two members on one shard are flagged; on two shards, or in one process
    (different keys in parallel), they are not."""
    assert len(check_exclusive(history([call("m1", 1.0, 1.02), call("m2", 1.01, 1.03)]))) == 1
    apart = [call("m1", 1.0, 1.02), call("m2", 1.01, 1.03, key="orders/01/k01")]
    assert not check_exclusive(history(apart))
    assert not check_exclusive(history([call("m1", 1.0, 1.02), call("m1", 1.01, 1.03, key="orders/00/k09")]))
    restarted = [call("m1", 1.0, 1.02, pid=7), call("m1", 1.03, 1.05, pid=8)]
    assert not check_exclusive(history(restarted))


def test_exclusive_excuses_only_a_call_running_when_its_member_froze_or_died() -> None:
    """A call cut by SIGSTOP that ends after SIGCONT may overlap the new owner's calls; a call the
    frozen member starts after SIGCONT (a zombie handing out queued work) may not. A call cut by
    kill -9 ends at the kill. A lease fault excuses calls begun within a lease of its start only."""
    pause = Event("pause", "m1", 2.0, 8.0, pid=101)
    frozen = [call("m1", 1.99, 8.01), call("m2", 7.0, 7.01)]
    assert not check_exclusive(history(frozen, [pause]))
    zombie = [call("m2", 8.0, 8.03), call("m1", 8.01, 8.02)]
    assert len(check_exclusive(history(zombie, [pause]))) == 1
    killed = [call("m1", 1.0, None, done=False), call("m2", 7.0, 7.01)]
    assert not check_exclusive(history(killed, [Event("kill", "m1", 1.005, 1.005, pid=101)]))
    assert len(check_exclusive(history(killed))) == 1  # never ended, never killed: still running
    fault = Event("fault", "m1", 10.0, 20.0, pid=101, detail="503")
    slow = [call("m1", 12.0, 15.01), call("m2", 15.0, 15.01)]
    assert not check_exclusive(history(slow, [fault]))
    late = [call("m1", 14.0, 15.01), call("m2", 15.0, 15.01)]
    assert len(check_exclusive(history(late, [fault]))) == 1


def test_leases_flag_a_member_handing_out_after_its_lease_was_taken_or_released() -> None:
    """Calls under the caller's own lease pass, also by a restarted process of the same member; a
    call after another member took the lease, or after the caller released it, is flagged."""
    writes = [LeaseWrite(0.5, "m1", "orders/00/", "m1", 1), LeaseWrite(1.5, "m1", "orders/00/", "m1", 1),
              LeaseWrite(5.0, "m2", "orders/00/", "m2", 2), LeaseWrite(5.9, "m2", "orders/00/", "m2", 2),
              LeaseWrite(8.0, "m2", "orders/00/", None, 2)]
    good = [call("m1", 1.0), call("m1", 4.9, pid=7), call("m2", 5.5), call("m1", 2.0, key="orders/01/k01")]
    assert not check_leases(History(0.0, LEASE, calls=good, leases=writes))
    pause = Event("pause", "m1", 1.6, 5.95, pid=101)
    late = [call("m1", 6.0), call("m2", 8.5)]
    found = check_leases(History(0.0, LEASE, calls=late, events=[pause], leases=writes))
    assert len(found) == 2
    assert "m2's (generation 2) since 5.000s (pause of m1 1.600s..5.950s)" in found[0]
    assert "released since 8.000s" in found[1]


def test_duplicates_need_an_unclean_event_of_the_previous_deliverer_and_stay_bounded() -> None:
    """A redelivery after the first deliverer was killed, paused or faulted is allowed; after its
    SIGTERM, or a kill of another member, it is flagged; beyond the bound per unclean event the
    total is flagged."""
    first, again = call("m1", 1.0), call("m2", 6.0)
    for kind in ("kill", "pause", "fault"):
        assert not check_duplicates(history([first, again], [Event(kind, "m1", 2.0, 3.0)]), 5)
    term = Event("term", "m1", 2.0, 2.5, pid=101, code=0)
    handover = history([first, again], [term])
    handover.leases = [LeaseWrite(0.5, "m1", "orders/00/", "m1", 1),
                       LeaseWrite(2.4, "m1", "orders/00/", None, 1),
                       LeaseWrite(4.0, "m2", "orders/00/", "m2", 2)]
    found = check_duplicates(handover, 5)
    assert found == ["redelivered: m2(pid 102) orders/00/k00#0 [6.000s..6.010s] after m1(pid 101) "
                     "orders/00/k00#0 [1.000s..1.010s], with no kill, pause or lease fault of m1 in between "
                     "(term of m1 2.000s..2.500s; "
                     "lease of orders/00/: released g1 at 2.400s, m2 g2 at 4.000s)"]
    assert len(check_duplicates(history([first, again], [Event("kill", "m3", 2.0, 2.0)]), 5)) == 1
    before = check_duplicates(history([first, again], [Event("kill", "m1", 0.5, 0.5)]), 5)
    assert len(before) == 1  # the kill came before the first delivery: it explains nothing
    many = [first, again, call("m1", 1.0, version="v2"), call("m2", 6.0, version="v2")]
    found = check_duplicates(history(many, [Event("kill", "m1", 2.0, 2.0)]), 1)
    assert found == ["too many redeliveries: 2 for 1 unclean events (bound 1 each)"]


def test_exits_flag_a_sigterm_not_ending_in_0_and_a_member_dying_unasked() -> None:
    """SIGTERM ending in 0 is fine; ending otherwise, or a process exiting by itself, is flagged."""
    assert not check_exits(history([], [Event("term", "m1", 1.0, 2.0, pid=101, code=0)]))
    bad = [Event("term", "m1", 1.0, 2.0, pid=101, code=1), Event("term", "m2", 1.0, 31.0, pid=102),
           Event("exit", "m3", 5.0, 5.0, pid=103, code=2)]
    assert len(check_exits(history([], bad))) == 3


def test_read_calls_pairs_lines_by_process_and_skips_torn_ones(tmp_path: Path) -> None:
    """Start and end lines pair by (pid, call number) across restarts; a start without an end has no
    end; a cancelled call has an end but did not complete; a torn last line is ignored."""
    def line(ev: str, pid: int, n: int, t: float, **more: object) -> bytes:
        doc = {"ev": ev, "m": "m1", "pid": pid, "n": n, "t": t, "shard": "orders/00/", "key": "orders/00/k00",
               "vid": f"v{pid}{n}", "body": "k00:0", **more}
        return orjson.dumps(doc) + b"\n"

    out = tmp_path / "m1.jsonl"
    out.write_bytes(line("start", 5, 0, 1.0) + line("end", 5, 0, 1.01, ok=True) + line("start", 5, 1, 1.5)
                    + line("start", 6, 0, 3.0) + line("end", 6, 0, 3.2, ok=False) + b'{"ev": "sta')
    calls = read_calls([out, tmp_path / "missing.jsonl"])
    assert [(c.pid, c.start, c.end, c.done) for c in calls] == [
        (5, 1.0, 1.01, True), (5, 1.5, None, False), (6, 3.0, 3.2, False)]


def test_plan_is_the_seeds_and_always_leaves_one_member_untouched() -> None:
    """The same seed gives the same schedule, of a dozen steps or more a minute with every kind of step
    among a few seeds; at no instant are more than two of the three members affected."""
    assert plan(random.Random(7), 3, 60, LEASE) == plan(random.Random(7), 3, 60, LEASE)
    kinds: set[str] = set()
    for seed in range(5):
        steps = plan(random.Random(seed), 3, NEMESIS_SECONDS, LEASE)
        assert len(steps) >= 12
        kinds |= {s.kind for s in steps}
        for step in steps:
            assert len({s.target for s in steps if s.at <= step.at < s.at + s.busy_for()}) <= 2
    assert kinds == {"kill", "pause", "term", "fault"}


async def shared(store: Store, bucket: str) -> bool:
    """Three member records holding two disjoint shards each."""
    page = await store.list_objects(bucket, f"{group_prefix('g')}members/")
    held = [orjson.loads((await store.get_object(bucket, e.key)).body)["shards"] for e in page.entries]
    return sorted(map(len, held)) == [2, 2, 2] and len(set().union(*held)) == SHARDS


async def produce(endpoint: str, url: str, rng: random.Random, rate: float, acks: list[Ack]) -> None:
    """A steady stream of versions of random keys among ``KEYS``, ``rate`` per second for
    ``NEMESIS_SECONDS`` (``BURST`` at a time), straight to the server; each key's versions in order
    (publish_many writes a key's messages one after another); each acknowledged write recorded."""
    settings = build_settings({"s3": {"endpoint_url": endpoint, "addressing_style": "path"}})
    seqs: Counter[str] = Counter()
    async with Producer(settings) as producer:
        began = time.monotonic()
        while time.monotonic() - began < NEMESIS_SECONDS:
            batch = []
            for _ in range(BURST):
                key = f"k{rng.randrange(KEYS):02d}"
                batch.append((key, seqs[key]))
                seqs[key] += 1
            published = await producer.publish_many(url, [(k, f"{k}:{n}") for k, n in batch])
            now = time.time()
            acks.extend(Ack(p.key, n, str(p.version_id), now)
                        for p, (_, n) in zip(published, batch, strict=True))
            await asyncio.sleep(max(0.0, began + len(acks) / rate - time.monotonic()))


async def registered(store: Store, bucket: str, node: Node) -> bool:
    """The member's record names its current process: it is up, and handles SIGTERM."""
    try:
        doc = orjson.loads((await store.get_object(bucket, member_key("g", node.name))).body)
    except NotFound:
        return False
    return bool(doc.get("pid") == node.pid)


def nodes_logs(tmp: Path) -> str:
    return "".join(log.read_text(errors="replace") for log in sorted(tmp.glob("m*.log")))


async def lost_detail(store: Store, bucket: str, ack: Ack, logs: str) -> str:
    """What tells a skipped write from a stuck shard: when the server stamped the version (a PUT
    answered more than the settle window after its stamp may be listed after the horizon passed it),
    and whether any member's log names it."""
    stamped = next((e.last_modified_ms for e in await key_versions(store, bucket, ack.key)
                    if e.version_id == ack.version), None)
    when = ("; not in the bucket" if stamped is None
            else f"; stamped {ack.at - stamped / 1000:.2f}s before its acknowledgement")
    return when + ("; named in a member's log" if ack.version in logs else "; in no member's log")


def caught_up(nodes: list[Node], acks: list[Ack]) -> bool:
    done = {(c.key, c.version) for c in read_calls(n.out for n in nodes) if c.done}
    return all((a.key, a.version) in done for a in acks)


async def chaos_run(store: Store, bucket: str, endpoint: str, rate: float, seed: int, h: History,
                    tmp: Path) -> tuple[dict[str, float], bool]:
    """Start the members, let the nemesis and the producer loose, heal, wait for the group to catch up
    and re-form, stop everyone with SIGTERM; the phases' durations, and whether it recovered."""
    url = f"s3://{bucket}/orders"
    timings: dict[str, float] = {}
    recovered = False
    nodes: list[Node] = []
    try:
        nodes = [Node(tmp, endpoint, url, f"m{i}", h) for i in (1, 2, 3)]
        for node in nodes:
            node.start()
        await wait_until(lambda: shared(store, bucket), within=60, what=f"2/2/2 (chaos seed {seed})")
        timings["settle"] = time.time() - h.t0
        producing = asyncio.create_task(produce(endpoint, url, random.Random(seed + 1), rate, h.acks))
        nemesis = Nemesis(nodes, h.events.append, lambda node: registered(store, bucket, node))
        await nemesis.run(plan(random.Random(seed), 3, NEMESIS_SECONDS, LEASE))
        await producing
        await nemesis.heal()
        timings["nemesis"] = time.time() - h.t0
        began = time.time()
        with contextlib.suppress(pytest.fail.Exception):  # the checkers say what is missing
            await wait_until(lambda: caught_up(nodes, h.acks), within=RECOVERY_SECONDS, what="catch-up")
            await wait_until(lambda: shared(store, bucket), within=RECOVERY_SECONDS, what="2/2/2 again")
            recovered = True
        timings["recovery"] = time.time() - began
        await asyncio.gather(*(node.terminate() for node in nodes))
    finally:
        for node in nodes:
            node.close()
        h.calls = read_calls(n.out for n in nodes)
    return timings, recovered


@pytest.mark.chaos
@pytest.mark.xdist_group("group-chaos")  # three members each: one server's run at a time
async def test_group_keeps_its_promises_under_a_seeded_nemesis(
        store: Store, bucket: str, s3_endpoint: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        request: pytest.FixtureRequest) -> None:
    """Under a minute of kill -9, SIGSTOP, SIGTERM, restarts and failing lease writes, with a producer
    writing throughout: every acknowledged message is handled, each key's versions are first handled in
    write order, no two members handle one shard at once except a call cut by its own member's kill
    or pause (or begun within a lease of its lease writes starting to fail), no member starts a call
    on a shard whose lease another member took or it released, nothing is handled twice except after
    an unclean event of its previous handler (a bounded number of times), every SIGTERM exits 0, and
    once the faults end the three members handle everything and share the shards 2/2/2 again."""
    caplog.set_level(logging.CRITICAL, logger="aiohttp.server")  # the proxies' peers die mid-answer
    seed = chaos_seed()
    print(f"\nchaos seed {seed} (S3STREAM_CHAOS_SEED={seed} replays it) on {s3_endpoint}")
    await create_topic(store, bucket, "orders", shards=SHARDS)
    rate = RATES[request.node.callspec.params["s3_endpoint"]]
    h = History(t0=time.time(), lease=LEASE)
    timings, recovered = await chaos_run(store, bucket, s3_endpoint, rate, seed, h, tmp_path)
    (tmp_path / "history.json").write_bytes(h.to_json())
    per_unclean = CONCURRENCY + int(2 * rate)  # what one crash may redeliver: in flight, 2 s of the stream
    violations = {
        "delivered": check_delivered(h), "order": check_order(h), "exclusive": check_exclusive(h),
        "leases": check_leases(h), "duplicates": check_duplicates(h, per_unclean), "exits": check_exits(h),
        "recovery": [] if recovered else [
            f"not caught up and back at 2/2/2 within {RECOVERY_SECONDS:.0f}s of the faults ending"],
    }
    violations["delivered"] = [v + await lost_detail(store, bucket, a, nodes_logs(tmp_path))
                               for v, a in zip(violations["delivered"], lost_acks(h), strict=True)]
    print(summary(seed, h))
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
          + f"; history and member logs in {tmp_path}")
    if any(violations.values()):
        pytest.fail(report(seed, violations), pytrace=False)
