"""Pure tests of segment decoding: every frame or member is read, and decompression is capped."""

from __future__ import annotations

import gzip

import pytest
import zstandard

from s3stream.layouts import segments


def test_a_multi_frame_zstd_segment_yields_every_frame() -> None:
    """A zstd segment written as two frames (as a tool appending to it would) decodes to the lines of
    both frames, not only the first's."""
    first = segments.encode([("a", b"one"), (None, b"two")])
    second = segments.encode([("b", b"three")])
    data = zstandard.ZstdCompressor().compress(first) + zstandard.ZstdCompressor().compress(second)
    assert segments.decode(data, ".seg.jsonl.zst") == [("a", b"one"), (None, b"two"), ("b", b"three")]


def test_a_multi_member_gzip_segment_yields_every_member() -> None:
    """A gzip segment of two members decodes to the lines of both."""
    data = gzip.compress(segments.encode([(None, b"x")])) + gzip.compress(segments.encode([(None, b"y")]))
    assert segments.decode(data, ".seg.jsonl.gz") == [(None, b"x"), (None, b"y")]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_a_segment_decompressing_past_the_limit_is_refused(compression: str) -> None:
    """A segment that would decompress to more than the limit (a source's max_decompressed_mb) is
    refused with an error naming the limit, before it is read whole; one within the limit decodes."""
    messages = [(None, b"z" * 1000) for _ in range(100)]  # about 110 kB of lines
    data = segments.encode(messages, compression)  # type: ignore[arg-type]
    suffix = segments.SUFFIXES[compression]
    with pytest.raises(segments.SegmentError, match="more than 50,000 bytes"):
        segments.decode(data, suffix, limit=50_000)
    assert len(segments.decode(data, suffix, limit=200_000)) == 100
