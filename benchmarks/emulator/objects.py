"""The S3 emulator's object operations: GetObject, HeadObject, PutObject (conditional writes),
DeleteObject, DeleteObjects, and multipart uploads (dated by the start of the upload, as S3 does)."""

from __future__ import annotations

import hashlib
import secrets
import time

from aiohttp import web
from multidict import CIMultiDictProxy

from benchmarks.emulator import documents as xml
from benchmarks.emulator.calls import XML_TYPE, Call, respond
from benchmarks.emulator.state import (
    Bucket,
    S3Error,
    Storage,
    Upload,
    Version,
    precondition_failed,
    unimplemented,
)

MIN_PART_SIZE = 5 << 20


def _etag_matches(condition: str, etag: str) -> bool:
    wanted = {c.strip().removeprefix("W/").strip('"') for c in condition.split(",")}
    return "*" in wanted or etag.strip('"') in wanted


def _metadata(headers: CIMultiDictProxy[str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k[:11].lower() == "x-amz-meta-"}


def _content_encoding(headers: CIMultiDictProxy[str]) -> str | None:
    value = headers.get("Content-Encoding")
    if value and "aws-chunked" in value:
        value = ",".join(p for p in (s.strip() for s in value.split(",")) if p != "aws-chunked")
    return value or None


def _assemble(upload: Upload, document: bytes, *, directory: bool) -> tuple[bytes, str]:
    """The body and ETag of a completed upload, checking the part list as S3 does."""
    try:
        listed = xml.parse_complete(document)
    except xml.MalformedXML as exc:
        raise S3Error(400, "MalformedXML", str(exc)) from None
    if not listed:
        raise S3Error(400, "MalformedXML", "CompleteMultipartUpload needs at least one part")
    numbers = [n for n, _ in listed]
    if numbers != sorted(set(numbers)):
        raise S3Error(400, "InvalidPartOrder", "The list of parts was not in ascending order.")
    chunks = []
    for i, (number, etag) in enumerate(listed):
        part = upload.parts.get(number)
        if part is None or part[0].strip('"') != etag.strip('"'):
            raise S3Error(400, "InvalidPart", f"part {number} was not uploaded or its ETag differs")
        if i < len(listed) - 1 and len(part[1]) < MIN_PART_SIZE:
            raise S3Error(400, "EntityTooSmall", "a part other than the last is smaller than 5 MiB")
        chunks.append(part[1])
    if directory:
        return b"".join(chunks), f'"{secrets.token_hex(16)}"'
    digests = b"".join(hashlib.md5(c).digest() for c in chunks)
    return b"".join(chunks), f'"{hashlib.md5(digests).hexdigest()}-{len(chunks)}"'


class ObjectOps(Storage):
    """Request handlers for the operations on objects (one method per operation)."""

    @staticmethod
    def _check_write(headers: CIMultiDictProxy[str], current: Version | None) -> None:
        none_match = headers.get("If-None-Match")
        if none_match is not None and current is not None and _etag_matches(none_match, current.etag):
            raise precondition_failed("If-None-Match")
        match = headers.get("If-Match")
        if match is not None and (current is None or not _etag_matches(match, current.etag)):
            raise precondition_failed("If-Match")

    def _write_headers(self, bucket: Bucket, version: Version) -> dict[str, str]:
        headers = {"ETag": version.etag}
        if bucket.versioning:
            headers["x-amz-version-id"] = version.version_id
        return headers

    def get_object(self, call: Call) -> web.Response:
        """GetObject and HeadObject (the server leaves the body out of a HEAD answer)."""
        bucket = self._bucket(call.bucket)
        version = self._find(bucket, call.key, call.query.get("versionId"))
        headers = dict(version.headers)
        if bucket.versioning:
            headers["x-amz-version-id"] = version.version_id
        none_match = call.headers.get("If-None-Match")
        if none_match is not None and _etag_matches(none_match, version.etag):
            return respond(call, b"", headers, status=304)
        match = call.headers.get("If-Match")
        if match is not None and not _etag_matches(match, version.etag):
            raise precondition_failed("If-Match")
        return respond(call, version.body, headers)

    def put_object(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        if "x-amz-copy-source" in call.headers:
            raise unimplemented("CopyObject")
        self._check_write(call.headers, self._current(bucket, call.key))
        version = self._new_version(
            bucket, call.body, int(time.time()), content_type=call.headers.get("Content-Type"),
            content_encoding=_content_encoding(call.headers), metadata=_metadata(call.headers),
        )
        self._store(bucket, call.key, version)
        return respond(call, b"", self._write_headers(bucket, version))

    def delete_object(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        version_id, marker = self._delete(bucket, call.key, call.query.get("versionId"))
        headers = {}
        if version_id is not None:
            headers["x-amz-version-id"] = version_id
        if marker:
            headers["x-amz-delete-marker"] = "true"
        return respond(call, b"", headers, status=204)

    def delete_objects(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        try:
            objects, quiet = xml.parse_delete(call.body)
        except xml.MalformedXML as exc:
            raise S3Error(400, "MalformedXML", str(exc)) from None
        if not objects or len(objects) > 1000:
            raise S3Error(400, "MalformedXML", "DeleteObjects takes 1 to 1,000 objects")
        deleted = []
        for key, version_id in objects:
            vid, marker = self._delete(bucket, key, version_id)
            marker_id = vid if marker else None
            deleted.append(xml.Deleted(key, version_id, marker, marker_id))
        return respond(call, xml.delete_result_xml(deleted, quiet), content_type=XML_TYPE)

    # ----------------------------------------------------------------------------- multipart

    def create_multipart_upload(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        upload_id = secrets.token_urlsafe(24)
        bucket.uploads[upload_id] = Upload(
            call.key, int(time.time()), call.headers.get("Content-Type"), _content_encoding(call.headers),
            _metadata(call.headers),
        )
        body = xml.initiate_upload_xml(bucket.name, call.key, upload_id)
        return respond(call, body, content_type=XML_TYPE)

    def _upload(self, bucket: Bucket, call: Call) -> tuple[str, Upload]:
        upload_id = call.query.get("uploadId", "")
        upload = bucket.uploads.get(upload_id)
        if upload is None or upload.key != call.key:
            raise S3Error(404, "NoSuchUpload", "The specified multipart upload does not exist.",
                          extra={"UploadId": upload_id})
        return upload_id, upload

    def upload_part(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        _, upload = self._upload(bucket, call)
        number = call.query.get("partNumber", "")
        if not number.isdigit() or not 1 <= int(number) <= 10_000:
            raise S3Error(400, "InvalidArgument", "Part number must be an integer between 1 and 10000")
        etag = f'"{hashlib.md5(call.body).hexdigest()}"'
        upload.parts[int(number)] = (etag, call.body)
        return respond(call, b"", {"ETag": etag})

    def complete_multipart_upload(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        upload_id, upload = self._upload(bucket, call)
        body, etag = _assemble(upload, call.body, directory=bucket.directory)
        self._check_write(call.headers, self._current(bucket, call.key))
        version = self._new_version(bucket, body, upload.initiated, content_type=upload.content_type,
                                    content_encoding=upload.content_encoding, metadata=upload.metadata,
                                    etag=etag)
        self._store(bucket, call.key, version)
        del bucket.uploads[upload_id]
        headers = self._write_headers(bucket, version)
        del headers["ETag"]
        return respond(call, xml.complete_upload_xml(bucket.name, call.key, etag), headers,
                       content_type=XML_TYPE)

    def abort_multipart_upload(self, call: Call) -> web.Response:
        bucket = self._bucket(call.bucket)
        upload_id, _ = self._upload(bucket, call)
        del bucket.uploads[upload_id]
        return respond(call, b"", status=204)
