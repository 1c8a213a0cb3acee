"""Consumer groups under a seeded nemesis, checked Jepsen-style (see :mod:`tests.chaos`).

Three ``s3stream consume`` processes share a six-shard topic, each through its own fault proxy, while
a producer writes versions of 30 keys and the nemesis kills (-9), pauses (SIGSTOP past the lease),
stops (SIGTERM) and restarts members and fails one member's lease writes for a while. Afterwards the
history is checked: everything acknowledged delivered, first deliveries in order per key, one owner
per shard outside the crash windows, redeliveries only after unclean events, clean exits.

The seed comes from ``S3STREAM_CHAOS_SEED`` or is drawn; it is printed and named in every failure,
so ``S3STREAM_CHAOS_SEED=N pytest tests/test_group_chaos.py`` replays the same schedule (timings on a
real machine vary, so a replay is likely, not certain, to fail the same way). The checkers are also
tested here on small hand-made histories, which need no server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from s3stream.config import build_settings
from s3stream.group import group_prefix
from s3stream.producer import Producer
from s3stream.store import Store
from s3stream.topics import create_topic
from tests.chaos import (
    Ack,
    Call,
    Event,
    History,
    LeaseWrite,
    Planned,
    check_delivered,
    check_duplicates,
    check_exclusive,
    check_exits,
    check_leases,
    check_order,
    plan,
    read_calls,
    report,
    summary,
)
from tests.conftest import wait_until
from tests.s3proxy import Action, Delay, Drop, Relayed, Rule, S3Error, S3Proxy

SHARDS = 6
KEYS = 30
LEASE = 3.0
NEMESIS_SECONDS = 60.0
RATES = {"moto": 15.0, "seaweedfs": 40.0}  # messages per second: moto's version listings keep up with ~900
BURST = 3  # written together: a steady stream keeps work in flight whenever the nemesis strikes
RECOVERY_SECONDS = 60.0
CONCURRENCY = 8  # the members' [consumer] concurrency
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
    found = check_duplicates(history([first, again], [term]), 5)
    assert len(found) == 1
    assert "no kill, pause or lease fault of m1 in between (term of m1 2.000s..2.500s)" in found[0]
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


# --- the run: member processes behind their own proxies, the nemesis, the producer ---------------


def _lease_write(request: web.Request) -> bool:
    return request.method == "PUT" and "/_s3stream/groups/" in request.path and "/leases/" in request.path


class WatchedProxy(S3Proxy):
    """A fault proxy in front of one member that also records each lease write it forwarded and the
    server accepted, timed when the answer came back (before the member sees it)."""

    def __init__(self, upstream: str, member: str, record: Callable[[LeaseWrite], None]) -> None:
        super().__init__(upstream)
        self.member, self.record = member, record

    async def _forward(self, request: web.Request,
                       rewrite: Callable[[web.Request, Relayed], Relayed] | None = None,
                       *, hold: float = 0.0) -> web.StreamResponse:
        if not _lease_write(request):
            return await super()._forward(request, rewrite, hold=hold)
        body = await request.read()  # aiohttp keeps it: the forward reads the same bytes

        def noted(req: web.Request, relayed: Relayed) -> Relayed:
            if relayed.status == 200:
                doc = orjson.loads(body)
                self.record(LeaseWrite(time.time(), self.member, str(doc["prefix"]), doc.get("owner"),
                                       int(doc["generation"])))
            return rewrite(req, relayed) if rewrite is not None else relayed

        return await super()._forward(request, noted, hold=hold)


class Node:
    """One member name of the group: its config, its own fault proxy, and its current process."""

    def __init__(self, tmp: Path, upstream: str, url: str, name: str, h: History) -> None:
        self.name, self.url, self.lease, self.record = name, url, h.lease, h.events.append
        self.proxy = WatchedProxy(upstream, name, h.leases.append).start()
        self.out, self.log, self.cfg = (tmp / f"{name}.jsonl", tmp / f"{name}.log", tmp / f"{name}.toml")
        self.cfg.write_text(
            f'[s3]\nendpoint_url = "{self.proxy.endpoint}"\naddressing_style = "path"\n'
            f'[consumer]\ngroup = "g"\nconcurrency = {CONCURRENCY}\npoll_interval = 0.1\n'
            "max_poll_interval = 1\n"
            "settle_window = 1\nshutdown_grace = 5\n[consumer.checkpoint]\ninterval = 0.2\n"
            "[consumer.leases]\nrenew_interval = 1\n"
            f'[handlers.chaos]\nuse = "tests.chaos_handler:make"\npath = "{self.out}"\nmember = "{name}"\n')
        self.proc: subprocess.Popen[bytes] | None = None
        self.busy = False

    def start(self) -> None:
        """Start a process under this member id (a pod restart: same name, new pid)."""
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "S3STREAM_LOG_LEVEL": "info",
               "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "s3stream", "consume", self.url, "--handler", "chaos",
                 "--config", str(self.cfg), "--lease-duration", str(self.lease), "--member-id", self.name],
                stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=root)
        now = time.time()
        self.record(Event("start", self.name, now, now, pid=self.proc.pid))

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def exited(self, within: float) -> int | None:
        """Wait up to ``within`` seconds for the process to end; its exit code, or None if it runs on."""
        if self.proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            return await asyncio.to_thread(self.proc.wait, within)
        return None

    async def terminate(self) -> None:
        """SIGTERM, recorded with the exit code (SIGKILL after 30 s: recorded as code None)."""
        pid, began = self.pid, time.time()
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        code = await self.exited(30)
        if code is None:
            self.signal(signal.SIGKILL)
            await self.exited(10)
        self.record(Event("term", self.name, began, time.time(), pid=pid, code=code))

    def close(self) -> None:
        """SIGKILL whatever still runs and stop the proxy (the end of a test, whatever happened)."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        self.proxy.stop()


FAULTS: dict[str, Callable[[Planned], Action]] = {
    "503": lambda _: S3Error(503, "SlowDown"),
    "delay": lambda step: Delay(step.delay),
    "drop": lambda _: Drop(),
}


class Nemesis:
    """Carries out a plan on the nodes, recording each step's window in the history."""

    def __init__(self, nodes: list[Node], record: Callable[[Event], None]) -> None:
        self.nodes, self.record = nodes, record

    async def run(self, steps: list[Planned]) -> None:
        began = time.monotonic()
        tasks = []
        for step in steps:
            await asyncio.sleep(max(0.0, began + step.at - time.monotonic()))
            self.reap()
            node = self.nodes[step.target]
            if node.busy or sum(n.busy for n in self.nodes) >= len(self.nodes) - 1:
                now = time.time()  # a restart or drain ran longer than planned
                self.record(Event("skip", node.name, now, now, detail=step.kind))
                continue
            node.busy = True
            tasks.append(asyncio.create_task(self._do(step, node)))
        await asyncio.gather(*tasks)

    def reap(self) -> None:
        """A member that ended without being asked to: record it and start it again."""
        for node in self.nodes:
            if not node.busy and node.proc is not None and not node.running():
                now = time.time()
                self.record(Event("exit", node.name, now, now, pid=node.pid, code=node.proc.returncode))
                node.start()

    def heal(self) -> None:
        """No faults, nobody paused, everybody running."""
        for node in self.nodes:
            node.proxy.clear()
            node.signal(signal.SIGCONT)
        self.reap()

    async def _do(self, step: Planned, node: Node) -> None:
        try:
            if step.kind == "fault":
                rule = node.proxy.add(Rule(FAULTS[step.fault](step), when=_lease_write))
                began = time.time()
                await asyncio.sleep(step.length)
                node.proxy.clear()
                self.record(Event("fault", node.name, began, time.time(), pid=node.pid,
                                  detail=f"{step.fault} x{rule.applied}"))
            elif step.kind == "pause":
                began = time.time()
                node.signal(signal.SIGSTOP)
                await asyncio.sleep(step.length)
                node.signal(signal.SIGCONT)
                self.record(Event("pause", node.name, began, time.time(), pid=node.pid))
            elif step.kind == "kill":
                pid, began = node.pid, time.time()
                node.signal(signal.SIGKILL)
                await node.exited(10)
                self.record(Event("kill", node.name, began, began, pid=pid))
                await asyncio.sleep(step.length)
                node.start()
            else:
                await node.terminate()
                await asyncio.sleep(step.length)
                node.start()
        finally:
            node.busy = False


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


def caught_up(nodes: list[Node], acks: list[Ack]) -> bool:
    done = {(c.key, c.version) for c in read_calls(n.out for n in nodes) if c.done}
    return all((a.key, a.version) in done for a in acks)


async def test_group_keeps_its_promises_under_a_seeded_nemesis(
        store: Store, bucket: str, s3_endpoint: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        request: pytest.FixtureRequest) -> None:
    """Under a minute of kill -9, SIGSTOP, SIGTERM, restarts and failing lease writes, with a producer
    writing throughout: every acknowledged message is handled, each key's versions are first handled in
    write order, no two members handle one shard at once except a call cut by its own member's kill
    or pause (or begun within a lease of its lease writes starting to fail), nothing is handled twice
    except after an unclean event of its first handler (a bounded number of times), and every SIGTERM
    exits 0."""
    caplog.set_level(logging.CRITICAL, logger="aiohttp.server")  # the proxies' peers die mid-answer
    seed = chaos_seed()
    print(f"\nchaos seed {seed} (S3STREAM_CHAOS_SEED={seed} replays it) on {s3_endpoint}")
    steps = plan(random.Random(seed), 3, NEMESIS_SECONDS, LEASE)
    await create_topic(store, bucket, "orders", shards=SHARDS)
    url = f"s3://{bucket}/orders"
    h = History(t0=time.time(), lease=LEASE)
    nodes: list[Node] = []
    timings: dict[str, float] = {}
    try:
        nodes = [Node(tmp_path, s3_endpoint, url, f"m{i}", h) for i in (1, 2, 3)]
        for node in nodes:
            node.start()
        await wait_until(lambda: shared(store, bucket), within=60, what=f"2/2/2 (chaos seed {seed})")
        timings["settle"] = time.time() - h.t0
        rate = RATES[request.node.callspec.params["s3_endpoint"]]
        producing = asyncio.create_task(produce(s3_endpoint, url, random.Random(seed + 1), rate, h.acks))
        nemesis = Nemesis(nodes, h.events.append)
        await nemesis.run(steps)
        await producing
        nemesis.heal()
        timings["nemesis"] = time.time() - h.t0
        began = time.time()
        with contextlib.suppress(pytest.fail.Exception):  # the checkers below say what is missing
            await wait_until(lambda: caught_up(nodes, h.acks), within=RECOVERY_SECONDS, what="catch-up")
        timings["catch-up"] = time.time() - began
        await asyncio.gather(*(node.terminate() for node in nodes))
    finally:
        for node in nodes:
            node.close()
    h.calls = read_calls(n.out for n in nodes)
    (tmp_path / "history.json").write_bytes(h.to_json())
    per_unclean = CONCURRENCY + int(2 * rate)  # what one crash may redeliver: in flight, 2 s of the stream
    violations = {
        "delivered": check_delivered(h), "order": check_order(h), "exclusive": check_exclusive(h),
        "leases": check_leases(h), "duplicates": check_duplicates(h, per_unclean), "exits": check_exits(h),
    }
    print(summary(seed, h))
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
          + f"; history and member logs in {tmp_path}")
    if any(violations.values()):
        pytest.fail(report(seed, violations), pytrace=False)
