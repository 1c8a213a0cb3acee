"""The SQS boundary: the one client, the few queue operations s3stream needs, and error translation.

Like :mod:`s3stream.s3.store` for S3, everything that talks to aiobotocore's SQS client lives here.
Callers get :mod:`s3stream.errors` types (a missing queue is :class:`QueueNotFound`, one line), and
every call goes through the one :class:`~s3stream.s3.retry.RetryPolicy` (botocore's own retries are off).
``SendMessageBatch`` retries only the entries SQS reports as failed.

Endpoints follow botocore's rule: ``AWS_ENDPOINT_URL_<SERVICE>`` wins, then the configured
``endpoint_url`` (``--endpoint-url``), then ``AWS_ENDPOINT_URL``; see ``S3Settings.resolved_endpoint``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import Counter

from s3stream import errors
from s3stream.config import S3Settings
from s3stream.s3.client import aws_client, retry_policy
from s3stream.s3.retry import RetryPolicy
from s3stream.s3.translate import translate as translate_s3

SQS_REQUESTS = Counter("s3stream_sqs_requests_total", "SQS requests sent (every attempt), by operation.",
                       ["operation"])

MAX_BATCH = 10
MAX_BATCH_BYTES = 256 * 1024  # SendMessageBatch: total payload of one call (and of one message)

_NOT_FOUND = {"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"}
_EXISTS = {"QueueNameExists", "QueueAlreadyExists", "AWS.SimpleQueueService.QueueNameExists"}
_THROTTLED = {
    "RequestThrottled", "ThrottlingException", "Throttling", "KmsThrottled",
    "AWS.SimpleQueueService.RequestThrottled", "RequestLimitExceeded",
}
_SERVER = {"InternalError", "InternalFailure", "ServiceUnavailable", "AWS.SimpleQueueService.InternalError"}
_DENIED = {
    "AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "UnrecognizedClientException",
    "SignatureDoesNotMatch", "ExpiredToken", "InvalidSecurity", "MissingAuthenticationToken",
    "KmsAccessDenied",
}


class QueueNotFound(errors.PermanentError):
    """The SQS queue does not exist (or is not visible to these credentials)."""


class BatchEntriesFailed(errors.RetriableError):
    """Some entries of a ``SendMessageBatch`` failed on the server side; they are sent again.
    ``failed`` holds the ids of the entries not sent."""

    def __init__(self, message: str, *, failed: tuple[str, ...], code: str = "", operation: str = "") -> None:
        super().__init__(message, code=code, operation=operation)
        self.failed = failed


class BatchEntriesRefused(errors.PermanentError):
    """SQS refused some entries of a ``SendMessageBatch`` as invalid (``SenderFault``); retrying
    will not help. ``failed`` holds the ids of the entries not sent."""

    def __init__(self, message: str, *, failed: tuple[str, ...], code: str = "", operation: str = "") -> None:
        super().__init__(message, code=code, operation=operation)
        self.failed = failed


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A message to send. ``id`` names it in errors; ``group_id``/``dedup_id`` are for FIFO queues."""

    id: str
    body: str
    group_id: str | None = None
    dedup_id: str | None = None


@dataclass(frozen=True, slots=True)
class InMessage:
    """A received message; ``attributes`` are its system attributes (``ApproximateReceiveCount``…)."""

    message_id: str
    receipt_handle: str
    body: str
    attributes: dict[str, str]


class Queue:
    """The SQS operations s3stream performs, on one client and any number of queue URLs."""

    def __init__(self, client: Any, retry: RetryPolicy) -> None:
        self.client = client
        self.retry = retry

    async def send_batch(self, queue_url: str, entries: list[OutMessage]) -> None:
        """Send ``entries`` with ``SendMessageBatch`` (at most 10 and 256 KiB a call).

        Entries SQS reports as failed through no fault of ours are sent again under the retry
        policy, alone; an entry refused as invalid (``SenderFault``) raises at once, naming it.
        The error raised has ``failed``: the ids of the entries not sent (earlier batches were).
        """
        chunks = list(_chunks(entries))
        for n, chunk in enumerate(chunks):
            try:
                await self._send_chunk(queue_url, chunk)
            except errors.StoreError as exc:
                unsent = getattr(exc, "failed", None) or tuple(m.id for m in chunk)
                exc.failed = (*unsent, *(m.id for later in chunks[n + 1:] for m in later))  # type: ignore[attr-defined]
                raise

    async def _send_chunk(self, queue_url: str, chunk: list[OutMessage]) -> None:
        pending = dict(enumerate(chunk))

        async def once() -> None:
            wire = [_entry(str(i), m) for i, m in pending.items()]
            resp = await self._raw("SendMessageBatch", self.client.send_message_batch,
                                   QueueUrl=queue_url, Entries=wire)
            failed = {int(f["Id"]): f for f in resp.get("Failed", [])}
            for i in list(pending):
                if i not in failed:
                    del pending[i]
            unsent = tuple(chunk[i].id for i in pending)
            refused = [f for f in failed.values() if f.get("SenderFault")]
            if refused:
                raise _refused(queue_url, [(chunk[int(f["Id"])].id, f) for f in refused], unsent)
            if failed:
                first = next(iter(failed.values()))
                raise BatchEntriesFailed(
                    f"SendMessageBatch: {len(failed)} of {len(wire)} entries failed on {queue_url}, "
                    f"e.g. {chunk[int(first['Id'])].id}: {first.get('Code')} {first.get('Message', '')}",
                    failed=unsent, code=str(first.get("Code", "")), operation="SendMessageBatch",
                )

        await self.retry.call(once, what="SendMessageBatch")

    async def receive(self, queue_url: str, *, max_messages: int = 10, wait_seconds: int = 20,
                      visibility_timeout: int | None = None) -> list[InMessage]:
        """Long-poll for up to ``max_messages`` messages, waiting up to ``wait_seconds``."""
        params: dict[str, Any] = {
            "QueueUrl": queue_url, "MaxNumberOfMessages": max_messages, "WaitTimeSeconds": wait_seconds,
            "MessageSystemAttributeNames": ["All"],
        }
        if visibility_timeout is not None:
            params["VisibilityTimeout"] = visibility_timeout
        resp = await self._call("ReceiveMessage", self.client.receive_message, **params)
        return [
            InMessage(message_id=m["MessageId"], receipt_handle=m["ReceiptHandle"], body=m.get("Body", ""),
                      attributes={str(k): str(v) for k, v in (m.get("Attributes") or {}).items()})
            for m in resp.get("Messages", [])
        ]

    async def delete(self, queue_url: str, receipt_handle: str) -> None:
        """Delete a received message."""
        await self._call("DeleteMessage", self.client.delete_message, QueueUrl=queue_url,
                         ReceiptHandle=receipt_handle)

    async def change_visibility(self, queue_url: str, receipt_handle: str, seconds: int) -> None:
        """Set a received message's visibility timeout to ``seconds`` from now."""
        await self._call("ChangeMessageVisibility", self.client.change_message_visibility,
                         QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds)

    async def create_queue(self, name: str, *, fifo: bool = False,
                           attributes: dict[str, str] | None = None) -> str:
        """Create a queue (``fifo``: the ``.fifo`` suffix is added if missing); returns its URL.

        Idempotent: when the queue exists (even with other attributes) its URL is returned as is.
        """
        attrs = dict(attributes or {})
        if fifo:
            name = name if name.endswith(".fifo") else name + ".fifo"
            attrs["FifoQueue"] = "true"
        try:
            resp = await self._call("CreateQueue", self.client.create_queue, QueueName=name, Attributes=attrs)
        except errors.PermanentError as exc:
            if exc.code not in _EXISTS:
                raise
            return await self.queue_url(name)
        return str(resp["QueueUrl"])

    async def queue_url(self, name: str) -> str:
        """The URL of the queue called ``name``."""
        resp = await self._call("GetQueueUrl", self.client.get_queue_url, QueueName=name)
        return str(resp["QueueUrl"])

    async def queue_arn(self, queue_url: str) -> str:
        """The queue's ARN (for access policies and bucket notification configurations)."""
        resp = await self._call("GetQueueAttributes", self.client.get_queue_attributes,
                                QueueUrl=queue_url, AttributeNames=["QueueArn"])
        return str(resp["Attributes"]["QueueArn"])

    async def set_policy(self, queue_url: str, policy: dict[str, Any]) -> None:
        """Replace the queue's access policy."""
        await self._call("SetQueueAttributes", self.client.set_queue_attributes, QueueUrl=queue_url,
                         Attributes={"Policy": orjson.dumps(policy).decode()})

    async def _call(self, operation: str, method: Any, **params: Any) -> Any:
        return await self.retry.call(lambda: self._raw(operation, method, **params), what=operation)

    async def _raw(self, operation: str, method: Any, **params: Any) -> Any:
        """One attempt: counted, errors translated."""
        _counter(operation).inc()
        with translate(operation, queue=params.get("QueueUrl") or params.get("QueueName")):
            return await method(**params)


@contextlib.asynccontextmanager
async def open_sqs(settings: S3Settings, *, max_connections: int = 16) -> AsyncIterator[Queue]:
    """Create the one SQS client for a process (endpoint by ``S3Settings.resolved_endpoint``)."""
    async with aws_client(settings, "sqs", max_connections=max_connections,
                                read_timeout=max(settings.read_timeout, 25.0)) as client:  # > 20 s polls
        yield Queue(client, retry_policy(settings))


@contextlib.contextmanager
def translate(operation: str, *, queue: str | None = None) -> Iterator[None]:
    """Translate botocore/aiohttp exceptions raised inside the block into s3stream errors (the
    store's translation, with SQS's error codes)."""
    with translate_s3(operation, service="SQS",
                         classifier=lambda code, status, message: classify(code, status, message, operation,
                                                                           queue)):
        yield


def classify(code: str, status: int, message: str | None, operation: str,
             queue: str | None) -> errors.StoreError:
    """The s3stream error for an SQS error answer (its code and HTTP status)."""
    detail = message or code or str(status)
    kw = {"code": code, "operation": operation}
    if code in _NOT_FOUND:
        return QueueNotFound(f"SQS queue {queue!r} does not exist (check --queue-url and the region)", **kw)
    if code in _DENIED or status == 403:
        return errors.AccessDenied(
            f"{operation} on SQS queue {queue!r} was denied ({code or status}): check the credentials "
            "and the IAM or queue policy", **kw,
        )
    if code in _THROTTLED or status in {429, 503}:
        return errors.Throttled(f"{operation}: throttled ({code or status})", **kw)
    if code in _SERVER or status >= 500:
        return errors.ServerError(f"{operation}: server error {status} ({detail})", **kw)
    return errors.PermanentError(f"{operation} on {queue!r}: {code or status}: {detail}", **kw)


def _entry(wire_id: str, message: OutMessage) -> dict[str, Any]:
    entry: dict[str, Any] = {"Id": wire_id, "MessageBody": message.body}
    if message.group_id is not None:
        entry["MessageGroupId"] = message.group_id
    if message.dedup_id is not None:
        entry["MessageDeduplicationId"] = message.dedup_id
    return entry


def _chunks(entries: list[OutMessage]) -> Iterator[list[OutMessage]]:
    """Batches of at most 10 entries and 256 KiB of bodies (a lone oversized body goes alone, and
    SQS refuses it with a clear error)."""
    chunk: list[OutMessage] = []
    size = 0
    for message in entries:
        length = len(message.body.encode())
        if chunk and (len(chunk) == MAX_BATCH or size + length > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(message)
        size += length
    if chunk:
        yield chunk


def _refused(queue_url: str, refused: list[tuple[str, dict[str, Any]]],
             unsent: tuple[str, ...]) -> BatchEntriesRefused:
    name, first = refused[0]
    return BatchEntriesRefused(
        f"SendMessageBatch to {queue_url}: SQS refused {len(refused)} message(s), e.g. {name}: "
        f"{first.get('Code')}: {first.get('Message', '')}", failed=unsent, code=str(first.get("Code", "")),
        operation="SendMessageBatch",
    )


@functools.lru_cache(maxsize=64)
def _counter(operation: str) -> Any:
    return SQS_REQUESTS.labels(operation=operation)
