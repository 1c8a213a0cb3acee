"""Codecs, framing and compression (the JSON-lines connector): unit tests of :mod:`s3stream.codecs`, then
consumers and
producers against moto over HTTP (store settings and the connector config: ``test_connector.py``)."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import zstandard

from s3stream.config import Settings, build_settings
from s3stream.errors import ConfigError
from s3stream.integrations.codecs import DEFAULT_DECODER, DecodeError, Decoder, EncodeError, Encoder, detect
from s3stream.layouts.producer import Producer
from s3stream.layouts.topics import CONTROL_PREFIX, create_topic, parse_log_key
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store, open_store
from s3stream.service.deadletter import DeadLetter, iter_dead_letters
from tests.conftest import Recorder, running, wait_until

VALUES: dict[str, list[Any]] = {
    "json": [{"id": 1, "name": "é"}, [1, 2.5], "text", None, True],
    "text": ["héllo", "b c", "x"],
    "csv": [["a", "b,c"], ["d", 'e"f'], ["g", "multi\nline"]],
    "raw": [b"\x00\xff", b"xyz"],
}


# --- unit: codecs, framing, compression -------------------------------------------------------------


def _objects(enc: Encoder, values: list[Any]) -> list[bytes]:
    """What a producer with ``enc`` stores for ``values``: one object of lines, or one per value."""
    if enc.framing == "lines":
        return [enc.body([enc.prepare(v) for v in values])]
    if enc.codec == "csv":  # framing none: the one object is the whole document
        return [enc.body([enc.prepare(values)])]
    return [enc.body([enc.prepare(v)]) for v in values]


@pytest.mark.parametrize("codec", ["json", "text", "csv", "raw"])
@pytest.mark.parametrize("framing", ["none", "lines"])
@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("detection", ["content-encoding", "extension", "explicit"])
def test_every_codec_framing_and_compression_round_trips(codec: Any, framing: Any, compression: Any,
                                                         detection: str) -> None:
    """What the Encoder writes, the Decoder reads back: the same values (raw: the same bodies) in order,
    with line numbers as offsets under ``lines``, whether compression is found from Content-Encoding,
    from the name's extension or set explicitly."""
    enc = Encoder(codec, framing, compression)
    values = VALUES[codec]
    key, encoding = "obj", ""
    if detection == "content-encoding":
        encoding = enc.content_encoding or ""
    elif detection == "extension":
        key += enc.suffix
    dec = Decoder(codec, framing, compression if detection == "explicit" else "auto")
    frames = [frame for data in _objects(enc, values) for frame in dec.decode(data, key, encoding)]
    if codec == "raw":
        assert [body for _, body, _ in frames] == values
        assert all(value is None for _, _, value in frames)
    elif codec == "csv" and framing == "none":
        assert [value for _, _, value in frames] == [values]
    else:
        assert [value for _, _, value in frames] == values
    offsets = [offset for offset, _, _ in frames]
    if framing == "none":
        assert offsets == [None] * len(frames)
    elif codec == "csv":  # the last record's quoted field spans two lines
        assert offsets == [0, 1, 2]
    else:
        assert offsets == list(range(len(values)))


@pytest.mark.parametrize(("key", "encoding", "expected"), [
    ("a.json", "", "none"), ("a.jsonl.gz", "", "gzip"), ("a.ZST", "", "zstd"), ("a.zstd", "", "zstd"),
    ("a", "gzip", "gzip"), ("a", "x-gzip", "gzip"), ("a", "zstd", "zstd"), ("a", "aws-chunked, gzip", "gzip"),
    ("a.gz", "zstd", "zstd"), ("a", "identity", "none"), ("dir.gz/a", "", "none"), ("a", "", "none"),
])
def test_auto_detection_reads_content_encoding_then_extension(key: str, encoding: str, expected: str) -> None:
    """``auto`` takes Content-Encoding first (any of its comma-separated codings), else the key's last
    extension; a setting other than auto wins over both."""
    assert detect(key, encoding) == expected
    assert detect(key, encoding, "none") == "none"
    assert detect(key, encoding, "zstd") == "zstd"


def test_defaults_hand_uncompressed_objects_over_as_stored() -> None:
    """The default decoder (raw, none, auto) is the workers' fast path for an object that declares no
    compression; a compressed one, or any codec or framing, goes through decoding."""
    assert DEFAULT_DECODER.passthrough("topic/k.json", "")
    assert not DEFAULT_DECODER.passthrough("topic/k.json.gz", "")
    assert not DEFAULT_DECODER.passthrough("topic/k", "zstd")
    assert Decoder(compression="none").passthrough("topic/k.gz", "gzip")
    assert not Decoder(codec="json").passthrough("topic/k", "")
    assert not Decoder(framing="lines").passthrough("topic/k", "")
    [(offset, body, value)] = DEFAULT_DECODER.decode(gzip.compress(b"\xffbin"), "k.gz")
    assert (offset, body, value) == (None, b"\xffbin", None)


def test_lines_are_numbered_from_zero_counting_blank_ones() -> None:
    """Framing ``lines`` splits on LF or CRLF, skips blank lines but counts them, and needs no final
    line end; the body is the line without its end."""
    frames = Decoder("json", "lines").decode(b'{"a": 1}\r\n\n   \n{"a": 2}', "k")
    assert frames == [(0, b'{"a": 1}', {"a": 1}), (3, b'{"a": 2}', {"a": 2})]
    assert Decoder("text", "lines").decode(b"", "k") == []


def test_multi_member_gzip_and_multi_frame_zstd_are_read_whole() -> None:
    """Objects appended to as several gzip members or zstd frames are decompressed in full."""
    gz = gzip.compress(b"a\n") + gzip.compress(b"b\n")
    zst = zstandard.ZstdCompressor().compress(b"a\n") + zstandard.ZstdCompressor().compress(b"b\n")
    for data, key in ((gz, "k.gz"), (zst, "k.zst")):
        assert [v for _, _, v in Decoder("text", "lines").decode(data, key)] == ["a", "b"]


@pytest.mark.parametrize(("compress", "key"), [(gzip.compress, "bomb.gz"),
                                                (zstandard.ZstdCompressor().compress, "bomb.zst")])
def test_a_compression_bomb_is_refused_at_the_limit(compress: Callable[[bytes], bytes], key: str) -> None:
    """An object that would decompress past the source's limit (here 1.2 MB of zeros from a few KB, in
    two members or frames) is a DecodeError naming the limit, not a memory blow-up; the same bytes
    under a larger limit decompress in full."""
    data = compress(bytes(600_000)) + compress(bytes(600_000))
    assert len(data) < 10_000
    with pytest.raises(DecodeError, match="decompresses to more than 1,048,576 bytes"):
        Decoder("raw", "none", "auto", 1 << 20).decode(data, key)
    assert Decoder("raw", "none", "auto", 2 << 20).decode(data, key) == [(None, bytes(1_200_000), None)]


def test_csv_record_may_span_lines() -> None:
    """With framing ``lines`` the csv codec splits records, not physical lines: a quoted field may hold
    a line break; the record's offset is its first line and its body both lines."""
    frames = Decoder("csv", "lines").decode(b'id,note\r\n1,"two\nlines"\n\n2,x\n', "k")
    assert frames == [(0, b"id,note", ["id", "note"]), (1, b'1,"two\nlines"', ["1", "two\nlines"]),
                      (4, b"2,x", ["2", "x"])]


@pytest.mark.parametrize(("decoder", "data", "key", "reason", "offset"), [
    (Decoder("json", "lines"), b"not gzip at all", "k.jsonl.gz", "cannot decompress (gzip)", None),
    (Decoder("json", "lines"), gzip.compress(b'{"a": 1}\n' * 50, mtime=0)[:-8], "k.gz",
     "cannot decompress (gzip)", None),
    (Decoder("text", "none", "zstd"), zstandard.ZstdCompressor().compress(b"x" * 999)[:-4], "k",
     "cannot decompress (zstd)", None),
    (Decoder("json", "lines"), b'{"a": 1}\n{"a": 2}\n{"a":\n', "k", "line 3 (offset 2): invalid JSON", 2),
    (Decoder("text", "lines"), b"ok\n\xff\xfe\n", "k", "line 2 (offset 1): invalid UTF-8", 1),
    (Decoder("csv", "lines"), b'a,b\nc,"d"e\n', "k", "line 2 (offset 1): invalid CSV", 1),
    (Decoder("csv", "lines"), b'a,b\n"c,d\n', "k", "line 2 (offset 1): invalid CSV", 1),
    (Decoder("csv", "lines"), b"a,b\n\xff\n", "k", "line 2 (offset 1): invalid UTF-8", 1),
    (Decoder("json"), b"", "k", "invalid JSON", None),
    (Decoder("csv"), b'a,"b', "k", "invalid CSV", None),
])
def test_undecodable_input_names_the_reason_and_line(decoder: Decoder, data: bytes, key: str, reason: str,
                                                     offset: int | None) -> None:
    """Damaged compression, invalid JSON, UTF-8 or CSV raise DecodeError saying what failed and, for a
    line, which one (1-based in the text, 0-based as the offset)."""
    with pytest.raises(DecodeError) as info:
        decoder.decode(data, key)
    assert str(info.value).startswith(reason)
    assert info.value.offset == offset


def test_encoder_serialises_values_and_refuses_what_it_cannot_write() -> None:
    """json serialises any JSON value and passes bytes through; text wants str; lines refuse a body
    with a line break (except a quoted csv field); suffixes name lines objects and compression."""
    assert Encoder("json").prepare({"a": [1, "é"]}) == orjson.dumps({"a": [1, "é"]})
    assert Encoder("json").prepare(b"{already}") == b"{already}"
    with pytest.raises(EncodeError, match=r"producer\.codec = 'text': takes bytes or str, not int"):
        Encoder("text").prepare(5)
    with pytest.raises(EncodeError, match=r"producer\.codec = 'json'"):
        Encoder("json").prepare({1, 2})
    with pytest.raises(EncodeError, match="line break"):
        Encoder("text", "lines").prepare("two\nlines")
    assert Encoder("csv", "lines").prepare(["a", "b\nc"]) == b'a,"b\nc"'
    assert Encoder("json", "lines", "gzip").suffix == ".jsonl.gz"
    assert Encoder("csv", "lines", "zstd").suffix == ".csv.zst"
    assert Encoder("raw", "none", "zstd").suffix == ".zst"
    assert Encoder().suffix == ""
    assert Encoder().content_encoding is None


def test_lines_objects_keep_log_names_and_are_not_segments() -> None:
    """A log-layout name with a lines or compression suffix parses (so the cursor keeps it in its
    ranges) and is a plain object, not a segment."""
    base = "t/00/202601010000/1767225600000-abcd-000000000001-_"
    for suffix in (".jsonl", ".jsonl.gz", ".csv.zst", ".txt", ".gz"):
        name = parse_log_key(base + suffix)
        assert name is not None
        assert name.suffix == suffix
        assert not name.is_segment
    segment = parse_log_key(base + ".seg.jsonl.zst")
    assert segment is not None
    assert segment.is_segment


def test_codec_settings_default_to_todays_behaviour_and_bad_values_name_the_field() -> None:
    """Sources default to raw / none / auto and producers to raw / none / none; a bad value is one
    line naming the field."""
    settings = build_settings({"sources": [{"url": "s3://b/p/"}]}, environ={})
    src = settings.sources[0]
    assert (src.codec, src.framing, src.compression) == ("raw", "none", "auto")
    assert (settings.producer.codec, settings.producer.framing) == ("raw", "none")
    assert settings.s3.max_connections is None
    bad = [({"sources": [{"url": "s3://b/p/", "codec": "xml"}]}, r"sources\.0\.codec: .*'xml'"),
           ({"sources": [{"url": "s3://b/p/", "framing": "csv"}]}, r"sources\.0\.framing"),
           ({"producer": {"compression": "auto"}}, r"producer\.compression"),
           ({"producer": {"framing": "records"}}, r"producer\.framing"),
           ({"s3": {"max_connections": 0}}, r"s3\.max_connections: .*\(got 0\)")]
    for data, pattern in bad:
        with pytest.raises(ConfigError, match=pattern) as info:
            build_settings(data, environ={})
        assert "\n" not in str(info.value)


# --- consumers and producers against moto -----------------------------------------------------------


def codec_settings(endpoint: str, url: str, *, producer: dict[str, Any] | None = None,
              s3: dict[str, Any] | None = None, **source: Any) -> Settings:
    return build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path", **(s3 or {})},
        "consumer": {"poll_interval": 0.05, "max_poll_interval": 0.2, "settle_window": 2.0,
                     "group": "codecs"},
        "producer": producer or {},
        "sources": [{"url": url, "handler": "rec", **source}],
    }, environ={})


async def _letters(store: Store, bucket: str, group: str = "codecs") -> list[DeadLetter]:
    return [dl async for dl in iter_dead_letters(store, bucket, CONTROL_PREFIX, group)]


async def test_gzip_json_lines_objects_become_messages_in_order(store: Store, bucket: str,
                                                                moto_endpoint: str) -> None:
    """A gzip'd JSON-lines object (known by its ``.gz`` name) and one marked only by Content-Encoding
    each become one message per line: the parsed value, the line as body, the line number as offset,
    in order, with the object's key and version."""
    docs = [{"seq": i, "name": f"n{i}"} for i in range(50)]
    data = b"".join(orjson.dumps(d) + b"\n" for d in docs)
    _, by_name = await store.put_object(bucket, "feed/a.jsonl.gz", gzip.compress(data))
    _, by_header = await store.put_object(bucket, "feed/b", gzip.compress(data), content_encoding="gzip")
    rec = Recorder()
    consumer = Consumer(codec_settings(moto_endpoint, f"s3://{bucket}/feed/", codec="json", framing="lines"))
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await rec.wait_count(100)
    for key, version in (("feed/a.jsonl.gz", by_name), ("feed/b", by_header)):
        got = [m for m in rec.messages if m.key == key]
        assert [m.value for m in got] == docs
        assert [m.offset for m in got] == list(range(50))
        assert [m.body for m in got] == data.splitlines()
        assert {m.version_id for m in got} == {version}


async def test_csv_object_becomes_one_message_per_record(store: Store, bucket: str,
                                                         moto_endpoint: str) -> None:
    """A csv object with framing ``lines`` gives each record's fields (quoted commas kept) as the value."""
    await store.put_object(bucket, "prices/p.csv", b'sku,price\r\nA-1,"1,50"\r\nB-2,3\r\n')
    rec = Recorder()
    consumer = Consumer(codec_settings(moto_endpoint, f"s3://{bucket}/prices/", codec="csv", framing="lines"))
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await rec.wait_count(3)
    assert [m.value for m in rec.messages] == [["sku", "price"], ["A-1", "1,50"], ["B-2", "3"]]
    assert [m.offset for m in rec.messages] == [0, 1, 2]


async def test_undecodable_objects_are_dead_lettered_while_others_flow(store: Store, bucket: str,
                                                                       moto_endpoint: str) -> None:
    """A corrupt gzip object and an object with an invalid JSON line each become one dead letter
    holding the reason, the bad line's offset and the object as stored; none of their lines is
    delivered; the good object's messages are, and the consumer keeps running."""
    bad_line = b'{"n": 1}\n{"n": 2}\n{"n": oops}\n{"n": 4}\n'
    await store.put_object(bucket, "in/corrupt.jsonl.gz", b"\x1f\x8b this is not gzip")
    await store.put_object(bucket, "in/bad-line.jsonl", bad_line)
    await store.put_object(bucket, "in/good.jsonl", b'{"n": 10}\n{"n": 11}\n')
    rec = Recorder()
    consumer = Consumer(codec_settings(moto_endpoint, f"s3://{bucket}/in/", codec="json", framing="lines"))
    consumer.register_handler("rec", rec)
    letters: list[DeadLetter] = []

    async def lettered() -> bool:
        letters[:] = await _letters(store, bucket)
        return len(letters) == 2

    async with running(consumer) as task:
        await rec.wait_count(2)
        await wait_until(lettered, what="two dead letters")
        assert not task.done()
    assert [m.value for m in rec.messages] == [{"n": 10}, {"n": 11}]
    by_key = {dl.original_key: dl for dl in letters}
    corrupt, line = by_key["in/corrupt.jsonl.gz"], by_key["in/bad-line.jsonl"]
    assert corrupt.error.startswith("undecodable: cannot decompress (gzip)")
    assert corrupt.offset is None
    assert line.error.startswith("undecodable: line 3 (offset 2): invalid JSON")
    assert (line.offset, line.body) == (2, bad_line)


@pytest.mark.parametrize("layout", ["versions", "log"])
async def test_producer_compression_round_trips_through_content_encoding(store: Store, bucket: str,
                                                                         moto_endpoint: str,
                                                                         layout: Any) -> None:
    """A producer with codec json, framing lines and compression gzip serialises Python values into
    JSON-lines objects marked ``Content-Encoding: gzip`` (versions layout: one new version per key,
    named as given; log layout: ``….jsonl.gz`` objects cut like segments), and a consumer with
    ``compression = auto`` reads every value back in order."""
    await create_topic(store, bucket, "orders", layout=layout)
    producer = {"codec": "json", "framing": "lines", "compression": "gzip", "segment_max_messages": 4,
                "linger": 0.01}
    settings = codec_settings(moto_endpoint, f"s3://{bucket}/orders", producer=producer, codec="json",
                         framing="lines")
    messages = [(f"k{i % 2}", {"i": i, "tags": ["x"]}) for i in range(10)]
    async with Producer(settings) as p:
        published = await p.publish_many(f"s3://{bucket}/orders", messages)
        single = await p.publish(f"s3://{bucket}/orders", {"i": 10}, key="k2")
    names = {pub.key for pub in published}
    for name in names | {single.key}:
        assert (await store.get_object(bucket, name)).content_encoding == "gzip"
        assert name.endswith(".jsonl.gz") if layout == "log" else name.rsplit("/", 1)[1] in {"k0", "k1", "k2"}
    if layout == "versions":
        assert len(names) == 2  # one object per key
    rec = Recorder()
    consumer = Consumer(settings)
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await rec.wait_count(11)
    assert sorted(m.value["i"] for m in rec.messages) == list(range(11))
    for pub in published:
        [got] = [m for m in rec.messages if (m.key, m.offset) == (pub.key, pub.offset)]
        assert got.value == messages[published.index(pub)][1]


async def test_json_codec_decodes_segment_bodies(store: Store, bucket: str, moto_endpoint: str) -> None:
    """Segments keep their own framing and compression (by name); a source's json codec still decodes
    each of their bodies, which the producer's json codec serialised."""
    await create_topic(store, bucket, "seg", layout="log")
    producer = {"codec": "json", "segment_max_messages": 5, "compression": "zstd", "linger": 0.01}
    settings = codec_settings(moto_endpoint, f"s3://{bucket}/seg", producer=producer, codec="json")
    values = [{"n": i} for i in range(10)]
    async with Producer(settings) as p:
        published = await p.publish_many(f"s3://{bucket}/seg", [(None, v) for v in values])
    assert all(pub.key.endswith(".seg.jsonl.zst") for pub in published)
    rec = Recorder()
    consumer = Consumer(settings)
    consumer.register_handler("rec", rec)
    async with running(consumer):
        await rec.wait_count(10)
    assert sorted(m.value["n"] for m in rec.messages) == list(range(10))
    assert all(orjson.loads(m.body) == m.value for m in rec.messages)


async def test_producer_codec_refusal_names_the_message(store: Store, bucket: str,
                                                        moto_endpoint: str) -> None:
    """A value the codec cannot write fails ``publish_many`` with one EncodeError naming its position,
    on the segment path as on the lines path."""
    await create_topic(store, bucket, "refuse", layout="log")
    url = f"s3://{bucket}/refuse"
    for producer in ({"codec": "text", "segment_max_messages": 5}, {"codec": "text", "framing": "lines"}):
        async with Producer(codec_settings(moto_endpoint, url, producer=producer)) as p:
            with pytest.raises(EncodeError, match=r"message 2: producer\.codec = 'text'"):
                await p.publish_many(url, [(None, "a"), (None, "b"), (None, 3)])


@pytest.mark.parametrize("lean_path", [True, False])
async def test_both_request_paths_fetch_stored_bytes_and_content_encoding(moto_endpoint: str, bucket: str,
                                                                          lean_path: bool) -> None:
    """GetObject over the lean path and over aiobotocore returns a gzip'd object as stored (never
    decompressed by the HTTP client) with its Content-Encoding, which ``auto`` needs."""
    s3 = {"endpoint_url": moto_endpoint, "addressing_style": "path", "lean_path": lean_path}
    data = gzip.compress(b'{"a": 1}\n')
    async with open_store(build_settings({"s3": s3}, environ={}).s3) as st:
        await st.put_object(bucket, "k", data, content_encoding="gzip")
        obj = await st.get_object(bucket, "k")
    assert (obj.body, obj.content_encoding) == (data, "gzip")
