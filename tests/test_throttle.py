"""The adaptive throttle: SlowDown answers slow a partition's requests down, successes recover."""

from __future__ import annotations

from s3stream.config import build_settings
from s3stream.errors import ServerError, Throttled
from s3stream.retry import Throttle
from s3stream.store import Store, open_store
from tests.s3proxy import Rule, S3Error, S3Proxy


def test_pause_doubles_on_slowdown_and_decays_on_success() -> None:
    """Each Throttled doubles the pause (from 10 ms, capped); other errors leave it; successes shrink
    it back to zero."""
    throttle = Throttle(max_pause=0.08)
    for expected in (0.01, 0.02, 0.04, 0.08, 0.08):
        throttle.observe(Throttled("slow down"))
        assert throttle.pause == expected
    throttle.observe(ServerError("500"))
    assert throttle.pause == 0.08
    for _ in range(200):
        throttle.observe(None)
    assert throttle.pause == 0.0


async def test_slowdown_from_s3_paces_the_client(moto_endpoint: str, bucket: str, store: Store) -> None:
    """After a burst of 503 SlowDown answers the store pauses before requests to that partition (the
    PUT still succeeds through retries), not before other partitions' (S3 throttles per prefix); a run
    of successes brings the pause back to zero."""
    rule = Rule(S3Error(503, "SlowDown"), method="PUT", first=3)
    with S3Proxy(moto_endpoint, [rule]) as proxy:
        settings = build_settings({"s3": {"endpoint_url": proxy.endpoint, "addressing_style": "path"}})
        async with open_store(settings.s3) as paced:
            await paced.put_object(bucket, "t/a", b"x")
            assert rule.applied == 3
            assert paced.throttle_for(bucket, "t/a").pause > 0
            assert paced.throttle_for(bucket, "u/a").pause == 0.0
            assert paced.throttle_for(bucket, "t/a/deeper") is paced.throttle_for(bucket, "t/a")
            for _ in range(60):
                await paced.get_object(bucket, "t/a")
            assert paced.throttle_for(bucket, "t/a").pause == 0.0
    assert (await store.get_object(bucket, "t/a")).body == b"x"
