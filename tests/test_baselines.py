"""The benchmark baselines (benchmarks/baselines.py) consume every version under a prefix, and fail clearly.

They run against the session's moto server over HTTP, like every other test. The AWS CLI baseline
builds its own venv (benchmarks/.awscli-venv, ``pip install awscli``) on first use; that needs PyPI
and takes a while the first time, and if it cannot be built the test fails rather than skips.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# `benchmarks` is not an installed package (only `s3stream` is): `python -m pytest` from the repository
# root finds it through the cwd, but the `pytest` script or another cwd would not, so put the root first.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import baselines  # noqa: E402
from s3stream.s3.store import Store  # noqa: E402
from tests.conftest import put_versions  # noqa: E402

PREFIX = "topic/"
BODY_SIZE = len("topic/k00.json#0")  # put_key writes "KEY#i"; every key below has the same length
VERSIONS = 30


@pytest.fixture
async def topic(store: Store, bucket: str) -> str:
    """30 versions under topic/ (28 keys once, one key twice), a delete marker, and an object elsewhere."""
    await put_versions(store, bucket, [f"{PREFIX}k{i:02d}.json" for i in range(28)], 1)
    await put_versions(store, bucket, [f"{PREFIX}k99.json"], 2)
    await store.delete_object(bucket, f"{PREFIX}k00.json")  # a delete marker: not a version with a body
    await store.put_object(bucket, "other/k00.json", b"outside the prefix")
    return bucket


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections (in the kernel's backlog) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def assert_every_version(result: baselines.BaselineResult) -> None:
    assert result.messages == VERSIONS
    assert result.body_bytes == VERSIONS * BODY_SIZE
    assert result.requests == 1 + VERSIONS  # one ListObjectVersions page, one GetObject per version
    assert not result.extrapolated
    assert result.seconds > 0
    assert result.cpu_seconds > 0


async def test_boto3_sequential_fetches_every_version(moto_endpoint: str, topic: str) -> None:
    """boto3_sequential GETs each of the 30 versions under the prefix once: no delete marker, nothing else."""
    result = await asyncio.to_thread(baselines.boto3_sequential, moto_endpoint, topic, PREFIX, timeout=60)
    assert_every_version(result)


async def test_aiobotocore_queue_fetches_every_version(moto_endpoint: str, topic: str) -> None:
    """aiobotocore_queue fetches all 30 versions through a queue smaller than the listing (back-pressure)."""
    result = await baselines.aiobotocore_queue(moto_endpoint, topic, PREFIX, concurrency=8, queue_size=4,
                                               timeout=60)
    assert_every_version(result)


async def test_run_aiobotocore_queue_uses_uvloop(moto_endpoint: str, topic: str) -> None:
    """run_aiobotocore_queue runs the queue baseline on a new uvloop loop and fetches everything."""
    pytest.importorskip("uvloop")
    result = await asyncio.to_thread(baselines.run_aiobotocore_queue, moto_endpoint, topic, PREFIX,
                                     timeout=60)
    assert_every_version(result)
    assert result.note.startswith("uvloop loop")


async def test_limit_caps_the_count_and_marks_extrapolated(moto_endpoint: str, topic: str) -> None:
    """With limit below the count both in-process baselines fetch exactly `limit` and say so; at it, not."""
    capped = [
        await asyncio.to_thread(baselines.boto3_sequential, moto_endpoint, topic, PREFIX, limit=5),
        await baselines.aiobotocore_queue(moto_endpoint, topic, PREFIX, concurrency=3, limit=5),
    ]
    for result in capped:
        assert (result.messages, result.body_bytes, result.extrapolated) == (5, 5 * BODY_SIZE, True)
    exact = await baselines.aiobotocore_queue(moto_endpoint, topic, PREFIX, limit=VERSIONS)
    assert (exact.messages, exact.extrapolated) == (VERSIONS, False)


async def test_silent_server_raises_timeout(silent_endpoint: str) -> None:
    """Against a server that never answers, the in-process baselines raise TimeoutError, not hang."""
    with pytest.raises(TimeoutError, match="did not answer"):
        await asyncio.to_thread(baselines.boto3_sequential, silent_endpoint, "b", PREFIX, timeout=2)
    with pytest.raises(TimeoutError, match="not done within 1"):
        await baselines.aiobotocore_queue(silent_endpoint, "b", PREFIX, timeout=1)


def test_awscli_venv_failure_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the AWS CLI venv cannot be built, ensure_awscli raises AwsCliUnavailable with the manual steps."""
    monkeypatch.setattr(baselines.sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(baselines.AwsCliUnavailable, match="pip install awscli"):
        baselines.ensure_awscli(tmp_path / "venv")


@pytest.mark.timeout(1200)  # the first run builds the AWS CLI venv from PyPI
@pytest.mark.parametrize("jq", [True, False], ids=["jq-if-installed", "no-jq"])
async def test_awscli_loop_fetches_limit_versions(moto_endpoint: str, topic: str, jq: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS CLI walkthrough's loop fetches exactly `limit` (3) versions, with jq and without (--output
    text)."""
    baselines.ensure_awscli()  # fails the test (no skip) when the CLI cannot be installed
    if not jq:
        monkeypatch.setattr(baselines, "_have_jq", lambda: False)
    result = await asyncio.to_thread(baselines.awscli_loop, moto_endpoint, topic, PREFIX, limit=3,
                                     timeout=120)
    assert (result.messages, result.body_bytes, result.requests) == (3, 3 * BODY_SIZE, 1 + 3)
    assert result.extrapolated
    assert result.note.startswith("aws-cli/1.")
    assert ("no jq installed" in result.note) is (not baselines._have_jq())
