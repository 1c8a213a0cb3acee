"""Consumer groups: members share a topic's shards through leases in the bucket.

The planner is checked as a pure function; the rest runs against moto over HTTP: members in one
process (balance, clean handover), the checkpoint fence, and real ``s3stream consume`` processes
killed with SIGKILL, paused with SIGSTOP, and scaled from one member to four and back. The fence, the
clean handover and the paused member run on SeaweedFS too, whose conditional writes are its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks.emulator import run_emulator
from s3stream.config import build_settings
from s3stream.errors import CheckpointConflict, ConfigError
from s3stream.groups.lease import LeaseView, Tenure, fair_share, plan
from s3stream.groups.lease import clock as lease_clock
from s3stream.groups.membership import Candidate, Membership, group_prefix, lease_key
from s3stream.layouts.cursor import Checkpoint
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import create_topic
from s3stream.pipeline.checkpoint import S3CheckpointStore
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store, open_store
from tests.conftest import Recorder, cli_command, new_bucket_name, wait_until
from tests.s3proxy import Delay, Rule, S3Proxy

SHARDS = 16
DURATION = 3.0
RENEW = 1.0
HANDOVER = DURATION + 2 * RENEW + 3.0  # lease expiry (+1 s clock slack), a round to see it, a poll


def test_fair_share_is_floor_or_ceil_and_sums_to_the_shards() -> None:
    """For every shard and member count, each member's target is ⌊S/N⌋ or ⌈S/N⌉ and the targets
    add up to S, whoever computes them."""
    for shards, count in itertools.product(range(0, 20), range(1, 7)):
        members = [f"m{i}" for i in range(count)]
        targets = [fair_share(shards, members, m) for m in members]
        assert sum(targets) == shards
        assert set(targets) <= {shards // count, -(-shards // count)}


def test_plan_releases_extras_takes_free_and_never_live_leases_of_others() -> None:
    """A member above its target gives up the excess; below it, it takes missing, released and
    expired leases and its own previous run's lease, but never a live lease of another member."""
    shards = [f"t/{i:02x}/" for i in range(4)]
    views = {
        shards[0]: LeaseView(shards[0], "b", 3, "e0", live=True),
        shards[1]: LeaseView(shards[1], None, 2, "e1", live=False),
        shards[2]: LeaseView(shards[2], "c", 5, "e2", live=False),
        shards[3]: LeaseView(shards[3], "a", 1, "e3", live=True),
    }
    taking = plan("a", ["a"], shards, views, held=set())
    assert not taking.release
    assert {v.shard for v in taking.acquire} == set(shards[1:])
    assert taking.acquire[0].shard == shards[3]  # its own lease first
    giving = plan("a", ["a", "b"], shards, views, held=set(shards[1:]))
    assert len(giving.release) == 1
    assert not giving.acquire
    assert plan("a", ["a", "b"], shards, views, held={shards[1], shards[2]}) == plan(
        "a", ["a", "b"], shards, views, held={shards[1], shards[2]})


@pytest.mark.usefixtures("s3_endpoint")
async def test_fence_refuses_the_previous_holders_commit(store: Store, bucket: str) -> None:
    """After a new lease holder fences a shard's checkpoint, the previous holder's next commit is a
    CheckpointConflict and the stored checkpoint keeps the new holder's state; a commit the previous
    holder made before the fence is what the new holder resumes from."""
    old = S3CheckpointStore(store, bucket=bucket, prefix="t/00/", control_prefix="_s3stream/checkpoints",
                            group="g")
    await old.fence("a", 1)
    await old.save(Checkpoint(watermark_ms=1000))
    new = S3CheckpointStore(store, bucket=bucket, prefix="t/00/", control_prefix="_s3stream/checkpoints",
                            group="g")
    assert await new.fence("b", 2) == Checkpoint(watermark_ms=1000)
    await new.save(Checkpoint(watermark_ms=5000))
    with pytest.raises(CheckpointConflict):
        await old.save(Checkpoint(watermark_ms=2000))
    stored = orjson.loads((await store.get_object(bucket, old.key)).body)
    assert (stored["watermark_ms"], stored["lease"]) == (5000, {"owner": "b", "generation": 2})


def test_leases_need_s3_checkpoints() -> None:
    """A group member with file checkpoints is refused, naming the setting."""
    settings = build_settings({"consumer": {"leases": {"enabled": True}, "checkpoint": {"store": "file"}},
                               "sources": [{"url": "s3://b/t/"}]})
    with pytest.raises(ConfigError, match=r"consumer\.leases"):
        Consumer(settings)
    with pytest.raises(ConfigError, match="renew_interval"):
        build_settings({"consumer": {"leases": {"duration": 3, "renew_interval": 2}}})


def group_settings(endpoint: str, url: str, member: str, duration: float = DURATION) -> Any:
    return build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path"},
        "consumer": {"group": "g", "concurrency": 8, "poll_interval": 0.1, "max_poll_interval": 1.0,
                     "settle_window": 2.0, "shutdown_grace": 5.0, "checkpoint": {"interval": 0.2},
                     "leases": {"enabled": True, "duration": duration, "renew_interval": RENEW,
                                "member_id": member}},
        "sources": [{"url": url, "handler": "rec"}],
    })


async def publish(endpoint: str, url: str, keys: range, per_key: int = 1) -> set[tuple[str, bytes]]:
    """Publish ``per_key`` versions of each key; the (key, body) pairs written."""
    sent = set()
    settings = build_settings({"s3": {"endpoint_url": endpoint, "addressing_style": "path"}})
    async with Producer(settings) as producer:
        for round_ in range(per_key):
            batch = [(f"k{k:04d}", f"k{k:04d}#{round_}".encode()) for k in keys]
            await producer.publish_many(url, batch)
            sent |= {(k, b) for k, b in batch}
    return sent


@contextlib.asynccontextmanager
async def members(endpoint: str, url: str, names: list[str],
                  duration: float = DURATION) -> AsyncIterator[dict[str, tuple[Consumer, Recorder]]]:
    """Run one in-process member per name; stop them all on exit."""
    running: dict[str, tuple[Consumer, Recorder]] = {}
    tasks = {}
    try:
        for name in names:
            consumer = Consumer(group_settings(endpoint, url, name, duration))
            recorder = Recorder()
            consumer.register_handler("rec", recorder)
            running[name] = (consumer, recorder)
            tasks[name] = asyncio.create_task(consumer.run())
        yield running
    finally:
        for consumer, _ in running.values():
            consumer.stop()
        async with asyncio.timeout(60):
            for task in tasks.values():
                await task


def holdings(running: dict[str, tuple[Consumer, Recorder]]) -> dict[str, set[str]]:
    return {name: {s.prefix for s in c.shards} for name, (c, _) in running.items()}


def balanced(held: dict[str, set[str]], total: int = SHARDS) -> bool:
    """Disjoint, covering every shard, and ⌊S/N⌋ or ⌈S/N⌉ each."""
    sizes = [len(s) for s in held.values()]
    union = set().union(*held.values())
    return (len(union) == total == sum(sizes) and max(sizes) - min(sizes) <= 1)


@pytest.mark.slow
async def test_three_members_split_sixteen_shards_and_a_clean_stop_hands_over(
        store: Store, bucket: str, s3_endpoint: str) -> None:
    """Three members settle on 5/5/6 disjoint shards; every message is delivered exactly once across
    them; when one stops cleanly the other two take its shards (8/8) at once, without waiting for the
    lease to expire, and messages published after that are delivered once as well."""
    await create_topic(store, bucket, "orders", shards=SHARDS)
    url = f"s3://{bucket}/orders"
    long_lease = 60.0  # expiry would take over 60 s; a clean handover takes a round or two (seconds)
    async with members(s3_endpoint, url, ["a", "b", "c"], long_lease) as running:
        await wait_until(lambda: balanced(holdings(running)), within=60, what="balanced 5/5/6")
        sent = await publish(s3_endpoint, url, range(160))

        def got() -> list[tuple[str, bytes]]:
            return [(m.key.rsplit("/", 1)[1], m.body) for _, r in running.values() for m in r.messages]

        await wait_until(lambda: set(got()) >= sent, within=60, what="all 160 delivered")
        consumer_c, _ = running["c"]
        consumer_c.stop()
        stopped = time.monotonic()
        rest = {k: v for k, v in running.items() if k != "c"}
        await wait_until(lambda: balanced(holdings(rest)), within=55, what="8/8 after c stopped")
        assert time.monotonic() - stopped < long_lease  # released, not expired
        listed = await store.list_objects(bucket, "_s3stream/groups/g/members/")
        assert sorted(e.key.rsplit("/", 1)[1] for e in listed.entries) == ["a.json", "b.json"]
        sent |= await publish(s3_endpoint, url, range(160, 240))
        await wait_until(lambda: set(got()) >= sent, within=30, what="all 240 delivered")
        assert sorted(Counter(got()).values())[-1] == 1


@pytest.mark.slow
async def test_late_renewals_pause_the_shards_and_an_uncontested_renewal_resumes_them(
        store: Store, bucket: str, moto_endpoint: str) -> None:
    """When a member's lease renewals are held up past the lease duration (a slow store), its shards
    stop polling, since the leases may have expired. Once a renewal gets through with ``If-Match``,
    which proves nobody took the lease, the same shards resume: no lease changes hands (generation
    stays 1), no shard is reopened, and every message is delivered exactly once."""
    await create_topic(store, bucket, "orders", shards=SHARDS)
    url = f"s3://{bucket}/orders"
    with S3Proxy(moto_endpoint) as proxy:
        async with members(proxy.endpoint, url, ["a"]) as running:
            consumer, recorder = running["a"]
            await wait_until(lambda: len(consumer.shards) == SHARDS, within=30, what="a holds 16")
            membership = consumer.membership
            assert membership is not None

            def got() -> list[tuple[str, bytes]]:
                return [(m.key.rsplit("/", 1)[1], m.body) for m in recorder.messages]

            opened = list(consumer.shards)
            sent = await publish(moto_endpoint, url, range(50))
            await wait_until(lambda: set(got()) >= sent, within=30, what="first 50 delivered")
            slow = proxy.add(Rule(Delay(DURATION + 1.5), method="PUT", first=SHARDS,
                                  when=lambda r: "/leases/" in r.path))

            def leased() -> list[bool]:
                return [s.holds(lease_clock()) for s in opened]

            await wait_until(lambda: not any(leased()), within=30, what="every shard paused")
            await wait_until(lambda: all(leased()), within=30, what="every shard resumed")
            sent |= await publish(moto_endpoint, url, range(50, 100))
            await wait_until(lambda: set(got()) >= sent, within=30, what="all 100 delivered")
            assert slow.applied == SHARDS
            assert [id(s) for s in consumer.shards] == [id(s) for s in opened]
            assert sorted(Counter(got()).values())[-1] == 1
    for shard in opened:
        lease = orjson.loads((await store.get_object(bucket, lease_key("g", shard.prefix))).body)
        assert (lease["owner"], lease["generation"]) == (None, 1)  # released at the stop, never moved


async def test_a_lease_deleted_under_its_holder_drops_the_shard_and_the_member_runs_on(
        store: Store, bucket: str, s3_endpoint: str) -> None:
    """A held lease removed from the bucket fails the next renewal's If-Match (S3 answers 404
    NoSuchKey, SeaweedFS 412): the member drops that shard and takes it again with a new lease, and
    keeps running instead of stopping with a store error."""
    await create_topic(store, bucket, "orders", shards=2)
    url = f"s3://{bucket}/orders"
    async with members(s3_endpoint, url, ["a"]) as running:
        consumer, _ = running["a"]
        await wait_until(lambda: len(consumer.shards) == 2, within=30, what="a holds both shards")
        first = consumer.shards[0]
        await store.client.delete_object(Bucket=bucket, Key=lease_key("g", first.prefix))
        await wait_until(lambda: first not in consumer.shards and len(consumer.shards) == 2, within=30,
                         what="the shard dropped and taken again")
    lease = orjson.loads((await store.get_object(bucket, lease_key("g", first.prefix))).body)
    assert (lease["owner"], lease["generation"]) == (None, 1)  # taken anew, released at the stop


class Member:
    """One ``s3stream consume`` process of the group, writing what it handles to its own JSON lines."""

    def __init__(self, tmp: Path, endpoint: str, url: str, name: str) -> None:
        self.name = name
        self.out = tmp / f"{name}.jsonl"
        self.log = tmp / f"{name}.log"
        cfg = tmp / f"{name}.toml"
        cfg.write_text(
            f'[s3]\nendpoint_url = "{endpoint}"\naddressing_style = "path"\n'
            '[consumer]\ngroup = "g"\nconcurrency = 8\npoll_interval = 0.1\nmax_poll_interval = 1\n'
            "settle_window = 2\nshutdown_grace = 5\n[consumer.checkpoint]\ninterval = 0.2\n"
            f"[consumer.leases]\nrenew_interval = {RENEW}\n"
            f'[handlers.out]\nuse = "jsonl"\npath = "{self.out}"\n')
        env = {**os.environ, "S3STREAM_LOG_LEVEL": "info"}
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                cli_command("consume", url, "--handler", "out", "--config", str(cfg),
                            "--lease-duration", str(DURATION), "--member-id", name),
                stdout=subprocess.DEVNULL, stderr=err, env=env)

    def delivered(self) -> list[tuple[str, str]]:
        """(key, body) pairs handled; a line cut short by kill -9 is ignored."""
        if not self.out.exists():
            return []
        pairs = []
        for line in self.out.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                doc = orjson.loads(line)
                pairs.append((doc["key"].rsplit("/", 1)[1], doc["body"]))
        return pairs

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        return self.proc.wait(timeout=60)


@pytest.fixture
def spawn(request: pytest.FixtureRequest, tmp_path: Path, moto_endpoint: str) -> Iterator[Any]:
    """Start members by name, on the test's server (``s3_endpoint`` if it takes it, else moto); every
    one still running is stopped (SIGTERM) at the end."""
    started: list[Member] = []
    taken = "s3_endpoint" in request.fixturenames
    endpoint = request.getfixturevalue("s3_endpoint") if taken else moto_endpoint

    def start(url: str, name: str) -> Member:
        member = Member(tmp_path, endpoint, url, name)
        started.append(member)
        return member

    yield start
    for member in started:
        member.stop()


async def held_by(store: Store, bucket: str) -> dict[str, set[str]]:
    """Each live member's shards, from the member records it rewrites every round."""
    prefix = f"{group_prefix('g')}members/"
    page = await store.list_objects(bucket, prefix)
    out = {}
    for entry in page.entries:
        if page.server_time_ms - entry.last_modified_ms <= DURATION * 1000:
            doc = orjson.loads((await store.get_object(bucket, entry.key)).body)
            out[doc["member"]] = set(doc["shards"])
    return out


async def settled(store: Store, bucket: str, names: set[str]) -> bool:
    held = await held_by(store, bucket)
    return set(held) == names and balanced(held)


def all_delivered(team: list[Member], sent: set[tuple[str, bytes]]) -> bool:
    got = {(k, b.encode() if isinstance(b, str) else b) for m in team for k, b in m.delivered()}
    return got >= sent


@pytest.mark.slow
async def test_kill_9_hands_the_shards_over_within_the_lease(
        store: Store, bucket: str, s3_endpoint: str, moto_url: str, spawn: Any) -> None:
    """Three processes share 16 shards (5/5/6). After ``kill -9`` of one, the other two hold all 16
    (8/8), and every message, those published before and after the kill, is handled: nothing is lost.
    On SeaweedFS the handover takes at most the lease duration plus a round and a poll. moto is not
    timed: it copies every version of the bucket on each listing, and with three members writing
    leases and checkpoints its listings take seconds, which would time moto, not the handover."""
    await create_topic(store, bucket, "orders", shards=SHARDS)
    url = f"s3://{bucket}/orders"
    team = [spawn(url, name) for name in ("m1", "m2", "m3")]
    await wait_until(lambda: settled(store, bucket, {"m1", "m2", "m3"}), within=120, what="5/5/6")
    sent = await publish(s3_endpoint, url, range(200))
    await wait_until(lambda: all_delivered(team, sent), within=120, what="first 200 handled")
    team[2].proc.kill()
    killed = time.monotonic()
    sent |= await publish(s3_endpoint, url, range(200, 300))
    await wait_until(lambda: settled(store, bucket, {"m1", "m2"}), within=120, what="8/8 after kill -9")
    took = time.monotonic() - killed
    await wait_until(lambda: all_delivered(team, sent), within=120, what="all 300 handled")
    print(f"handover after kill -9: {took:.1f}s (lease {DURATION}s, renewal every {RENEW}s)")
    if s3_endpoint != moto_url:
        assert took < HANDOVER + DURATION, f"handover took {took:.1f}s"


@pytest.mark.slow
async def test_a_paused_member_cannot_clobber_the_checkpoint(
        store: Store, bucket: str, s3_endpoint: str, spawn: Any) -> None:
    """A member paused with SIGSTOP past its lease loses its shards to the other member, which
    fences their checkpoints and handles what arrives meanwhile. Resumed, the paused member finds
    its leases taken and its writes refused: no checkpoint ever moves backwards, messages handled
    during the pause are not handed out again, and the two members settle back to 8/8."""
    await create_topic(store, bucket, "orders", shards=SHARDS)
    url = f"s3://{bucket}/orders"
    one, two = spawn(url, "m1"), spawn(url, "m2")
    await wait_until(lambda: settled(store, bucket, {"m1", "m2"}), within=120, what="8/8")
    sent = await publish(s3_endpoint, url, range(100))
    await wait_until(lambda: all_delivered([one, two], sent), within=120, what="first 100 handled")
    two.proc.send_signal(signal.SIGSTOP)
    await wait_until(lambda: settled(store, bucket, {"m1"}), within=120, what="m1 holds all 16")
    during = await publish(s3_endpoint, url, range(100, 200))
    await wait_until(lambda: all_delivered([one], during), within=120, what="m1 handled the pause's 100")
    before = await checkpoints(store, bucket)
    two.proc.send_signal(signal.SIGCONT)
    samples = [before]
    deadline = time.monotonic() + 120
    while not await settled(store, bucket, {"m1", "m2"}):
        assert time.monotonic() < deadline, "m2 never rejoined"
        samples.append(await checkpoints(store, bucket))
    samples.append(await checkpoints(store, bucket))
    for earlier, later in itertools.pairwise(samples):
        for shard, (watermark, generation) in earlier.items():
            assert later[shard][0] >= watermark, f"{shard} rewound"
            assert later[shard][1] >= generation, f"{shard} written under an older lease"
    after = await publish(s3_endpoint, url, range(200, 300))
    await wait_until(lambda: all_delivered([one, two], sent | during | after), within=120, what="all 300")
    again = {k for k, _ in two.delivered()} & {k for k, _ in during}
    assert not again, f"handled during the pause by m1, handed out again by m2: {sorted(again)[:5]}"
    assert two.stop() == 0


async def checkpoints(store: Store, bucket: str) -> dict[str, tuple[int, int]]:
    """Every shard checkpoint of group g: (watermark, lease generation it was written under)."""
    page = await store.list_objects(bucket, "_s3stream/checkpoints/g/")
    out = {}
    for entry in page.entries:
        doc = orjson.loads((await store.get_object(bucket, entry.key)).body)
        out[entry.key] = (doc["watermark_ms"], doc.get("lease", {}).get("generation", 0))
    return out


@pytest.mark.slow
async def test_scaling_from_one_member_to_four_and_back(
        store: Store, bucket: str, moto_endpoint: str, spawn: Any) -> None:
    """One member holds all 16 shards; three more join and the group settles at 4/4/4/4; three leave
    with SIGTERM and the last one holds all 16 again. Messages published at every stage are handled,
    and each exactly once: clean handovers finish and commit before a shard moves."""
    await create_topic(store, bucket, "orders", shards=SHARDS)
    url = f"s3://{bucket}/orders"
    team = [spawn(url, "m1")]
    await wait_until(lambda: settled(store, bucket, {"m1"}), within=60, what="m1 holds 16")
    sent = await publish(moto_endpoint, url, range(100))
    team += [spawn(url, name) for name in ("m2", "m3", "m4")]
    await wait_until(lambda: settled(store, bucket, {"m1", "m2", "m3", "m4"}), within=60, what="4/4/4/4")
    sent |= await publish(moto_endpoint, url, range(100, 200))
    await wait_until(lambda: all_delivered(team, sent), within=60, what="200 handled by four")
    for member in team[1:]:
        assert member.stop() == 0
    await wait_until(lambda: settled(store, bucket, {"m1"}), within=60, what="m1 holds 16 again")
    sent |= await publish(moto_endpoint, url, range(200, 300))
    await wait_until(lambda: all_delivered(team, sent), within=60, what="all 300 handled")
    counts = Counter(pair for member in team for pair in member.delivered())
    assert max(counts.values()) == 1, [p for p, n in counts.items() if n > 1][:5]


@pytest.mark.e2e
async def test_lease_bookkeeping_stays_one_entry_per_lease_when_etags_change_on_every_write() -> None:
    """Where ETags are not MD5 (a directory bucket here; S3 Express and SSE-KMS alike) every renewal
    gives a lease a new ETag. Over many renewals and rebalances, what a member remembers of lease
    bodies stays one entry per lease, and the leases stay held."""
    async def take(_: Candidate, __: Tenure) -> bool:
        return True

    async def give_up(_: Candidate) -> None:
        return None

    with run_emulator("express", latency_ms=0) as emu:
        settings = build_settings({"s3": {"endpoint_url": emu.url, "addressing_style": "path"}}).s3
        async with open_store(settings) as store:
            bucket = f"{new_bucket_name('lease')}--use1-az4--x-s3"
            await store.create_directory_bucket(bucket, "use1-az4")
            shards = [Candidate(bucket, f"t/{i:02x}/") for i in range(3)]
            member = Membership(store, group="g", member="m", duration=30.0, renew_interval=1.0,
                                candidates=shards, take=take, give_up=give_up, lost=lambda _: None)
            etags: set[str] = set()
            for _ in range(20):
                await member.renew()
                async with asyncio.TaskGroup() as tg:
                    await member.rebalance(tg)
                etags |= {held.etag for held in member.held.values()}
            assert sorted(p for _, p in member.held) == [c.prefix for c in shards]
            assert len(etags) >= 3 * 19  # a new ETag at (nearly) every renewal
            assert len(member._bodies) == len(shards)
