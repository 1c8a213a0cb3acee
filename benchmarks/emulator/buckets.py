"""The S3 emulator's bucket operations: CreateBucket, HeadBucket, DeleteBucket, versioning, location,
CreateSession, and the listings (``ListObjectsV2`` with S3 Express's rules on directory buckets,
``ListObjectVersions`` with versions and delete markers interleaved as S3 lists them)."""

from __future__ import annotations

import base64
import random
import secrets
import time

from aiohttp import web

from benchmarks.emulator import documents as xml
from benchmarks.emulator.calls import XML_TYPE, Call, respond
from benchmarks.emulator.state import Bucket, S3Error, Session, Storage, unimplemented

SESSION_SECONDS = 300


def _directory_listing_rules(page: xml.ObjectsPage) -> None:
    """What S3 Express refuses in ``ListObjectsV2`` on a directory bucket."""
    if page.start_after:
        raise S3Error(400, "InvalidArgument", "StartAfter is not supported by directory buckets")
    if page.delimiter and page.delimiter != "/":
        raise S3Error(400, "InvalidArgument", "directory buckets only support the delimiter /")
    if page.delimiter and page.prefix and not page.prefix.endswith("/"):
        raise S3Error(400, "InvalidArgument", "with a delimiter, a directory bucket prefix must end in /")


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise S3Error(400, "InvalidArgument", "The continuation token provided is incorrect") from None


def _after_prefix(prefix: str) -> str:
    """The smallest string above every string that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _max_keys(query: dict[str, str]) -> int:
    text = query.get("max-keys", "1000")
    if not text.isdigit():
        raise S3Error(400, "InvalidArgument", f"max-keys must be a non-negative integer, not {text!r}")
    return min(int(text), 1000)


class BucketOps(Storage):
    """Request handlers for the operations on buckets (one method per operation)."""

    # ----------------------------------------------------------------------------- listings

    def list_objects_v2(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        q = call.query
        page = xml.ObjectsPage(
            bucket=bucket.name, prefix=q.get("prefix", ""), delimiter=q.get("delimiter", ""),
            max_keys=_max_keys(q), encode=q.get("encoding-type") == "url",
            storage_class="EXPRESS_ONEZONE" if bucket.directory else "STANDARD",
            token=q.get("continuation-token"), start_after=q.get("start-after") or None,
        )
        if bucket.directory:
            _directory_listing_rules(page)
        start = page.prefix
        if page.token is not None:
            start = max(start, _decode_token(page.token))
        elif page.start_after:
            start = max(start, page.start_after + "\0")
        resume = self._scan(bucket, page, start)
        page.next_token = base64.urlsafe_b64encode(resume.encode()).decode() if resume is not None else None
        if bucket.directory:
            random.shuffle(page.contents)
        return respond(call, xml.list_objects_v2_xml(page), content_type=XML_TYPE)

    @staticmethod
    def _scan(bucket: Bucket, page: xml.ObjectsPage, start: str) -> str | None:
        """Fill a page with current objects and common prefixes from ``start`` on; return where the
        next page starts, or None when nothing is left. A common prefix is skipped in one seek."""
        prefix, delimiter, objects = page.prefix, page.delimiter, bucket.objects
        keys, resume, found = bucket.keys.iter_from(start), start, 0
        while (key := next(keys, None)) is not None and key.startswith(prefix):
            latest = objects[key][-1]
            if latest.delete_marker:
                continue
            if found == page.max_keys:
                return resume
            found += 1
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut < 0:
                page.contents.append((key, latest))
                resume = key + "\0"
            else:
                common = key[: cut + len(delimiter)]
                page.prefixes.append(common)
                resume = _after_prefix(common)
                keys = bucket.keys.iter_from(resume)
        return None

    def list_object_versions(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        if bucket.directory:
            raise unimplemented("ListObjectVersions on a directory bucket")
        q = call.query
        if q.get("delimiter"):
            raise unimplemented("ListObjectVersions with a delimiter")
        page = xml.VersionsPage(
            bucket=bucket.name, prefix=q.get("prefix", ""), key_marker=q.get("key-marker", ""),
            version_id_marker=q.get("version-id-marker", ""), max_keys=_max_keys(q),
            encode=q.get("encoding-type") == "url",
        )
        self._scan_versions(bucket, page)
        return respond(call, xml.list_versions_xml(page), content_type=XML_TYPE)

    @staticmethod
    def _scan_versions(bucket: Bucket, page: xml.VersionsPage) -> None:
        """Keys ascending, each key's versions newest first, after the markers."""
        start = page.key_marker if page.version_id_marker else page.key_marker + "\0"
        for key in bucket.keys.iter_from(max(page.prefix, start) if page.key_marker else page.prefix):
            if not key.startswith(page.prefix):
                return
            versions = bucket.objects[key]
            newest = index = len(versions) - 1
            if key == page.key_marker:  # resume inside the marker key, after its marker version
                ids = [v.version_id for v in versions]
                if page.version_id_marker not in ids:
                    continue
                index = ids.index(page.version_id_marker) - 1
            while index >= 0:
                if len(page.entries) == page.max_keys:
                    page.truncated = True
                    return
                page.entries.append((key, versions[index], index == newest))
                index -= 1

    # ----------------------------------------------------------------------------- buckets

    def create_bucket(self, call: Call) -> web.Response:
        if call.bucket in self.buckets:
            raise S3Error(409, "BucketAlreadyOwnedByYou",
                          "Your previous request to create the named bucket succeeded and you own it.",
                          extra={"BucketName": call.bucket})
        self._create(call.bucket)
        return respond(call, b"", {"Location": f"/{call.bucket}"})

    def head_bucket(self, call: Call) -> web.Response:
        self._bucket(call.bucket)
        return respond(call, b"", {"x-amz-bucket-region": "us-east-1"})

    def delete_bucket(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        if bucket.objects:
            raise S3Error(409, "BucketNotEmpty", "The bucket you tried to delete is not empty",
                          extra={"BucketName": bucket.name})
        del self.buckets[bucket.name]
        return respond(call, b"", status=204)

    def get_bucket_versioning(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        if bucket.directory:
            raise unimplemented("GetBucketVersioning on a directory bucket")
        return respond(call, xml.versioning_xml(bucket.versioning), content_type=XML_TYPE)

    def put_bucket_versioning(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        if bucket.directory:
            raise unimplemented("PutBucketVersioning on a directory bucket")
        try:
            bucket.versioning = xml.parse_versioning(call.body)
        except xml.MalformedXML as exc:
            raise S3Error(400, "MalformedXML", str(exc)) from None
        return respond(call)

    def get_bucket_location(self, call: Call) -> web.Response:
        self._bucket(call.bucket)
        return respond(call, xml.location_xml(), content_type=XML_TYPE)

    def create_session(self, call: Call) -> web.Response:
        """Issue session credentials, for any bucket name: aiobotocore asks before CreateBucket."""
        now = time.time()
        if len(self.sessions) > 10_000:
            for token in [t for t, s in self.sessions.items() if s.expires < now]:
                del self.sessions[token]
        token = secrets.token_urlsafe(48)
        access_key = "ASIA" + secrets.token_hex(8).upper()
        session = Session(access_key, secrets.token_urlsafe(30), now + SESSION_SECONDS)
        self.sessions[token] = session
        body = xml.create_session_xml(session.access_key, session.secret, token, session.expires)
        return respond(call, body, content_type=XML_TYPE)
