"""Store settings and the JSON-lines connector: a MinIO-style store (endpoint, region, path style) against
moto, ``max_connections``, multipart threshold and part size, and ``config/connector.toml`` checked by
the CLI and run through the seed's flow (write a JSON-lines file, read its documents back)."""

from __future__ import annotations

import asyncio
import gzip
import os
import subprocess
from pathlib import Path

import orjson
from aiohttp import web

from s3stream.config import build_settings, load_settings, read_toml
from s3stream.layouts.producer import Producer
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store, open_store
from tests.conftest import Recorder, cli_command, new_bucket_name, running
from tests.s3proxy import Drop, Rule, S3Proxy
from tests.test_cli import child_env
from tests.test_codecs import codec_settings

REPO = Path(__file__).resolve().parent.parent
CONNECTOR = REPO / "config" / "connector.toml"


# --- store settings: endpoint, region, path style, max_connections, multipart ---------------------------


async def test_minio_style_config_round_trips(moto_endpoint: str) -> None:
    """The JSON-lines connector's MinIO setup (custom endpoint, path-style addressing, region
    eu-central-1): the bucket
    is created in that region, every request goes to ``/BUCKET/…`` and is signed for eu-central-1, and
    what the producer writes the consumer reads."""
    scopes: list[str] = []

    def record(request: web.Request) -> bool:
        scopes.append(request.headers.get("Authorization", ""))
        return False  # never fires: only watches

    with S3Proxy(moto_endpoint, [Rule(Drop(), when=record)]) as proxy:
        bucket = new_bucket_name("minio")
        settings = codec_settings(proxy.endpoint, f"s3://{bucket}/events/", s3={"region": "eu-central-1"},
                             producer={"codec": "json", "framing": "lines"}, codec="json", framing="lines")
        async with open_store(settings.s3) as st:
            await st.create_bucket(bucket, versioning=True, region="eu-central-1")
            location = await st.client.get_bucket_location(Bucket=bucket)
        async with Producer(settings) as p:
            await p.publish_many(f"s3://{bucket}/events", [(None, {"n": i}) for i in range(5)])
        rec = Recorder()
        consumer = Consumer(settings)
        consumer.register_handler("rec", rec)
        async with running(consumer):
            await rec.wait_count(5)
        paths = [path for _, path, _ in proxy.requests]
    assert location["LocationConstraint"] == "eu-central-1"
    assert [m.value for m in rec.messages] == [{"n": i} for i in range(5)]
    assert paths
    assert all(path.startswith(f"/{bucket}") for path in paths)
    signed = [s for s in scopes if s]
    assert signed
    assert all("/eu-central-1/s3/aws4_request" in s for s in signed)


async def test_max_connections_sizes_both_connection_pools(moto_endpoint: str) -> None:
    """``[s3] max_connections`` sizes aiobotocore's pool and the lean path's connector; unset, the
    caller's figure (consumer concurrency + 8, producer concurrency + 4) stays."""
    s3 = {"endpoint_url": moto_endpoint, "addressing_style": "path"}
    for setting, expected in ((3, 3), (None, 40)):
        settings = build_settings({"s3": {**s3, "max_connections": setting}}, environ={}).s3
        async with open_store(settings, max_connections=40) as st:
            assert st.client.meta.config.max_pool_connections == expected
            assert st.lean is not None
            assert st.lean._session.connector is not None
            assert st.lean._session.connector.limit == expected


async def test_multipart_threshold_and_part_size_are_honoured(store: Store, bucket: str,
                                                              moto_endpoint: str) -> None:
    """A body above ``multipart_threshold`` is uploaded in parts of ``multipart_part_size`` (11 MiB in
    5 MiB parts: a 3-part ETag), keeping its Content-Encoding; a body at the threshold is one PUT."""
    producer = {"multipart_threshold": 5 << 20, "multipart_part_size": 5 << 20, "compression": "gzip"}
    url = f"s3://{bucket}/big"
    big = os.urandom(11 << 20)  # random: gzip cannot shrink it below two parts
    async with Producer(codec_settings(moto_endpoint, url, producer=producer)) as p:
        large = await p.publish(url, big, key="large")
    plain = {**producer, "compression": "none"}
    async with Producer(codec_settings(moto_endpoint, url, producer=plain)) as p:
        small = await p.publish(url, b"s" * (5 << 20), key="small")
    assert large.etag.endswith("-3")
    assert "-" not in small.etag
    obj = await store.get_object(bucket, large.key)
    assert obj.content_encoding == "gzip"
    assert gzip.decompress(obj.body) == big


# --- the JSON-lines connector's config ----------------------------------------------------------------------


def test_connector_config_is_accepted_by_config_check() -> None:
    """``s3stream config check config/connector.toml`` accepts the JSON-lines connector: a JSON-lines
    reader and writer on a MinIO-style store with the seed's multipart and connection settings."""
    result = subprocess.run(cli_command("config", "check", str(CONNECTOR)), env=child_env(),
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "ok (1 source(s)" in result.stdout
    settings = load_settings(CONNECTOR)
    assert (settings.s3.region, settings.s3.addressing_style) == ("eu-central-1", "path")
    assert settings.s3.endpoint_url == "http://127.0.0.1:9000"
    assert settings.s3.max_connections == 10
    assert (settings.producer.codec, settings.producer.framing) == ("json", "lines")
    assert settings.producer.multipart_threshold == 16 << 20
    [src] = settings.sources
    assert (src.codec, src.framing, src.compression) == ("json", "lines", "auto")


async def test_connector_flow_replays_a_json_lines_file(store: Store, moto_endpoint: str,
                                                        tmp_path: Path) -> None:
    """The seed's flow with the connector config pointed at moto: ``bucket create`` in the config's
    region, ``publish --lines`` of a JSON-lines file writes one object holding its lines, and a
    consumer built from the same config gets each document back, in order."""
    bucket = new_bucket_name("snot")
    source = tmp_path / "in.json"
    docs = [{"snot": "badger", "n": i} for i in range(25)]
    source.write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in docs))
    common = ["--config", str(CONNECTOR), "--endpoint-url", moto_endpoint]
    for args, stdin in ((["bucket", "create", bucket, "--versioning"], b""),
                        (["publish", f"s3://{bucket}/events", "--lines"], source.read_bytes())):
        result = await asyncio.to_thread(subprocess.run, cli_command(*args, *common), env=child_env(),
                                         input=stdin, capture_output=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
    data = read_toml(CONNECTOR)
    data["s3"]["endpoint_url"] = moto_endpoint
    data["sources"][0].update(url=f"s3://{bucket}/events/", handler="rec")
    data["consumer"].update(settle_window=2.0, max_poll_interval=0.2)
    rec = Recorder()
    consumer = Consumer(build_settings(data, environ={}))
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await rec.wait_count(25)
    assert [m.value for m in rec.messages] == docs
    assert len({m.key for m in rec.messages}) == 1
