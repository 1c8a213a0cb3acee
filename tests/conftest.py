"""Shared fixtures: real S3 servers over HTTP, fresh versioned buckets, and consumer helpers.

Nothing here fakes the S3 client: every test talks HTTP to a real server on 127.0.0.1, started once per
session on free ports. moto's server (``ThreadedMotoServer``) runs every test; SeaweedFS (``weed
server``, see ``benchmarks/seaweed.py``) runs the end-to-end data-path tests a second time, so a promise is
checked against a second implementation of S3's versioning, listings and conditional writes.

- ``moto_endpoint``: moto, for the tests that need something only moto does (SQS, notifications, a
  LastModified stamped in the past by patching moto's clock) and for those off the data path.
- ``s3_endpoint``: each server in turn; a test that takes it runs as ``test[moto]`` and
  ``test[seaweedfs]``. ``store`` and ``bucket`` follow it when the test takes it, else moto.
- Modules named in ``ON_EVERY_SERVER`` take ``moto_endpoint`` but run on both servers as if they had
  taken ``s3_endpoint``; ``@pytest.mark.moto_only`` keeps one of their tests on moto.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.seaweed import start_seaweedfs
from s3stream.cli.devserver import start_moto
from s3stream.config import Settings, build_settings
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store, open_store

os.environ.update(
    AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
)
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_REGION", None)  # AWS_REGION beats AWS_DEFAULT_REGION: tests sign for us-east-1

_names = itertools.count()


SERVERS = ("moto", "seaweedfs")
ON_EVERY_SERVER = frozenset({"test_log_layout", "test_producer"})


# The fixtures that start or reach a real server. A test whose fixture closure holds one of these is
# ``e2e``; so is a test marked ``e2e`` by hand (one that starts an emulator, a dev-server or the CLI
# against a server in its body, or takes a module's own server fixture). Every other test is ``unit``.
SERVER_FIXTURES = frozenset({"moto_url", "seaweedfs_url", "moto_endpoint", "s3_endpoint", "store", "bucket"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "moto_only: in an ON_EVERY_SERVER module, run this test on moto only")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test exactly one of the ``unit`` and ``e2e`` tiers, and start the ``slow`` and
    ``chaos`` tests first: spread over xdist's workers from the start, they are not the run's tail."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None
               and item.get_closest_marker("chaos") is None)
    for item in items:
        if item.get_closest_marker("unit") is not None:
            raise pytest.UsageError(f"{item.nodeid}: the unit tier is given here, not by hand")
        if item.get_closest_marker("e2e") is not None:
            continue
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
        else:
            item.add_marker(pytest.mark.unit)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the tests of ``ON_EVERY_SERVER`` modules that use a server on each server in turn."""
    module = metafunc.module.__name__.rpartition(".")[2]
    if (module in ON_EVERY_SERVER and "moto_endpoint" in metafunc.fixturenames
            and "s3_endpoint" not in metafunc.fixturenames
            and metafunc.definition.get_closest_marker("moto_only") is None):
        metafunc.parametrize("moto_endpoint", SERVERS, indirect=True)


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """The URL of a moto S3 server running for the whole session."""
    server, endpoint = start_moto(0)
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a SeaweedFS S3 gateway running for the whole session (started at first use)."""
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), access_key="testing",
                             secret_key="testing")
    yield server.endpoint
    server.stop()


@pytest.fixture
def moto_endpoint(request: pytest.FixtureRequest) -> str:
    """moto's URL (in an ``ON_EVERY_SERVER`` module: each server's in turn)."""
    return str(request.getfixturevalue(f"{getattr(request, 'param', 'moto')}_url"))


@pytest.fixture(params=SERVERS)
def s3_endpoint(request: pytest.FixtureRequest) -> str:
    """Each real S3 server's URL in turn: moto's, then SeaweedFS's."""
    return str(request.getfixturevalue(f"{request.param}_url"))


def new_bucket_name(tag: str = "t") -> str:
    """A bucket name no other test uses."""
    return f"s3s-{tag}-{os.getpid()}-{next(_names)}"


@pytest.fixture
async def store(request: pytest.FixtureRequest, moto_endpoint: str) -> AsyncIterator[Store]:
    """An s3stream Store talking to the test's server: ``s3_endpoint`` if it takes it, else moto."""
    taken = "s3_endpoint" in request.fixturenames
    endpoint = request.getfixturevalue("s3_endpoint") if taken else moto_endpoint
    settings = build_settings({"s3": {"endpoint_url": endpoint, "addressing_style": "path"}}).s3
    async with open_store(settings, max_connections=64) as st:
        yield st


@pytest.fixture
async def bucket(store: Store) -> str:
    """A fresh versioned bucket."""
    name = new_bucket_name()
    await store.create_bucket(name, versioning=True)
    return name


def make_settings(endpoint: str, url: str, *, handler: str = "rec", **consumer: Any) -> Settings:
    """Settings for one source, with fast polling unless overridden. Idle shards whose topic has a
    head still list every second (``reconcile_interval``): many tests watch the cursor's horizon
    move past their writes, or write with plain PUTs beside a producer (tests/test_heads.py keeps
    the long default where it matters)."""
    consumer = {"poll_interval": 0.05, "max_poll_interval": 0.2, "settle_window": 2.0,
                "reconcile_interval": 1.0, **consumer}
    return build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path"},
        "consumer": consumer,
        "sources": [{"url": url, "handler": handler}],
    })


async def put_key(store: Store, bucket: str, key: str, count: int,
                  sem: asyncio.Semaphore | None = None) -> list[str]:
    """Write ``count`` versions of ``key`` in order (bodies ``KEY#i``); their version ids."""
    versions = []
    for i in range(count):
        async with sem or contextlib.nullcontext():
            _, vid = await store.put_object(bucket, key, f"{key}#{i}".encode())
        versions.append(str(vid))
    return versions


async def put_versions(store: Store, bucket: str, keys: list[str], per_key: int,
                       *, concurrency: int = 16) -> dict[str, list[str]]:
    """Write ``per_key`` versions of each key (keys in parallel, each in order); ids per key."""
    sem = asyncio.Semaphore(concurrency)
    written = await asyncio.gather(*(put_key(store, bucket, key, per_key, sem) for key in keys))
    return dict(zip(keys, written, strict=True))


class Recorder:
    """A handler that records every message and lets tests wait for conditions with a deadline."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Condition()

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)
        async with self._changed:
            self._changed.notify_all()

    def by_key(self) -> dict[str, list[str]]:
        """Delivered version ids per key, in delivery order."""
        out: dict[str, list[str]] = defaultdict(list)
        for m in self.messages:
            out[m.key].append(m.version_id)
        return dict(out)

    def idents(self) -> list[tuple[str, str]]:
        return [(m.key, m.version_id) for m in self.messages]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 30.0) -> None:
        """Wait until ``predicate()`` holds, failing the test after ``within`` seconds."""
        async with self._changed:
            try:
                async with asyncio.timeout(within):
                    await self._changed.wait_for(predicate)
            except TimeoutError:
                pytest.fail(f"condition not met within {within}s; {len(self.messages)} messages seen")

    async def wait_count(self, count: int, within: float = 30.0) -> None:
        await self.wait_for(lambda: len(self.messages) >= count, within)


@contextlib.asynccontextmanager
async def running(consumer: Consumer) -> AsyncIterator[asyncio.Task[None]]:
    """Run a consumer in the background; stop it cleanly (and surface its error) on exit."""
    task = asyncio.create_task(consumer.run())
    started = asyncio.ensure_future(consumer.started.wait())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        task.result()
    try:
        yield task
    finally:
        consumer.stop()
        async with asyncio.timeout(60):
            await task


async def wait_until(predicate: Callable[[], Any], within: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` (sync or async) every 20 ms until true, failing after ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while True:
                result = predicate()
                if asyncio.iscoroutine(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"{what} not reached within {within}s")


def cli_command(*args: str) -> list[str]:
    """The argv that runs the installed ``s3stream`` CLI with this interpreter."""
    return [sys.executable, "-m", "s3stream", *args]


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
