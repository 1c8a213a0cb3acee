"""The adaptive throttle: SlowDown answers slow a partition's requests down, successes recover."""

from __future__ import annotations

import time

import pytest

from s3stream.config import build_settings
from s3stream.errors import ServerError, Throttled
from s3stream.s3.retry import Throttle
from s3stream.s3.store import Store, open_store
from tests.s3proxy import Rule, S3Error, S3Proxy


def test_rate_cut_on_slowdown_and_raised_by_successes() -> None:
    """Unpaced until a SlowDown; then paced at 70 % of the recent send rate; a SlowDown for a request
    sent before that cut does not cut again, a later one does; other errors change nothing;
    successes raise the rate until it is unpaced again."""
    throttle = Throttle(max_rate=200.0)
    assert throttle.rate is None
    before = time.monotonic()
    for _ in range(100):
        throttle._count(time.monotonic())
    throttle.observe(Throttled("slow down"), before)
    first = throttle.rate
    assert first is not None
    assert 200 < first <= 0.7 * 100 / 0.25 + 1e-6
    throttle.observe(Throttled("slow down"), before)  # in flight before the cut
    assert throttle.rate == first
    throttle.observe(Throttled("slow down"), time.monotonic())
    assert throttle.rate == pytest.approx(0.7 * first)
    throttle.observe(ServerError("500"), time.monotonic())
    assert throttle.rate == pytest.approx(0.7 * first)
    for _ in range(10_000):
        throttle.observe(None, time.monotonic())
        if throttle.rate is None:
            break
    assert throttle.rate is None


async def test_slowdown_from_s3_paces_the_client(moto_endpoint: str, bucket: str, store: Store) -> None:
    """After a burst of 503 SlowDown answers the store paces requests to that partition (the PUT still
    succeeds through retries), not other partitions' (S3 throttles per prefix); successes raise the
    pace again."""
    rule = Rule(S3Error(503, "SlowDown"), method="PUT", first=3)
    with S3Proxy(moto_endpoint, [rule]) as proxy:
        settings = build_settings({"s3": {"endpoint_url": proxy.endpoint, "addressing_style": "path"}})
        async with open_store(settings.s3) as paced:
            await paced.put_object(bucket, "t/a", b"x")
            assert rule.applied == 3
            paced_rate = paced.throttle_for(bucket, "t/a").rate
            assert paced_rate is not None
            assert paced.throttle_for(bucket, "u/a").rate is None
            assert paced.throttle_for(bucket, "t/a/deeper") is paced.throttle_for(bucket, "t/a")
            for _ in range(20):
                await paced.get_object(bucket, "t/a")
            assert (paced.throttle_for(bucket, "t/a").rate or float("inf")) > paced_rate
    assert (await store.get_object(bucket, "t/a")).body == b"x"
