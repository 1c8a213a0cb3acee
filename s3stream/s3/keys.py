"""S3 URLs as commands and sources give them, and the versions of exactly one key."""

from __future__ import annotations

from s3stream.config import parse_s3_url
from s3stream.errors import ConfigError
from s3stream.message import Entry
from s3stream.s3.store import Store


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/rest`` to ``(bucket, rest)``, or a ConfigError naming the URL."""
    try:
        return parse_s3_url(url)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


async def key_versions(store: Store, bucket: str, key: str) -> list[Entry]:
    """Every version and delete marker of exactly ``key`` (not of keys it is a prefix of), oldest first."""
    found: list[Entry] = []
    key_marker: str | None = None
    version_marker: str | None = None
    while True:
        page = await store.list_versions(bucket, key, key_marker=key_marker, version_id_marker=version_marker)
        found.extend(e for e in store.listing.page(page.entries) if e.key == key)
        if not page.truncated:
            return store.listing.oldest_first(found)
        key_marker, version_marker = page.next_key_marker, page.next_version_id_marker
