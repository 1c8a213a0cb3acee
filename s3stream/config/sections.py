"""The settings of the store and of the engine: ``[s3]``, ``[consumer]`` (with ``[consumer.checkpoint]``
and ``[consumer.leases]``), ``[producer]``, ``[metrics]`` and ``[tracing]``.

Each field's ``description`` is written for users: ``scripts/gen_docs.py`` turns them into the
configuration reference and ``config/full.toml``.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from s3stream.config.env import env_region
from s3stream.integrations.codecs import Framing
from s3stream.plugins import check_codec


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class S3Settings(_Model):
    """How to reach the store. Credentials come from the standard AWS chain (environment, ~/.aws, SSO,
    instance or task role) unless given here."""

    endpoint_url: str | None = Field(
        default=None, examples=["http://127.0.0.1:9000"],
        description="The S3 endpoint URL, for MinIO, Ceph or a local server. Unset: AWS_ENDPOINT_URL if "
                    "that is set, else AWS itself. AWS_ENDPOINT_URL_S3 (or _SQS) beats it for that service.",
    )
    region: str = Field(
        default_factory=lambda: env_region(os.environ), min_length=1, examples=["us-east-1"],
        description="The region requests are signed for, and where `bucket create` puts a bucket. Unset: "
                    "AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1; set here, it wins over both.",
    )
    expected_bucket_owner: str | None = Field(
        default=None, pattern=r"^[0-9]{12}$", examples=["111122223333"],
        description="The AWS account id that must own every bucket s3stream touches: sent with each "
                    "request (x-amz-expected-bucket-owner), so S3 refuses (403 AccessDenied) a bucket "
                    "another account owns, and s3stream stops with one line.",
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto",
        description="\"auto\" (botocore decides), \"path\" (http://HOST/BUCKET/KEY: MinIO, Ceph, moto, most "
                    "S3-compatible servers) or \"virtual\" (http://BUCKET.HOST/KEY).",
    )
    profile: str | None = Field(
        default=None, examples=["prod"],
        description="A named profile of ~/.aws/config to take credentials and settings from.",
    )
    access_key_id: str | None = Field(
        default=None, examples=["AKIA..."],
        description="An explicit access key id; used only together with secret_access_key. Prefer the "
                    "environment or a role to secrets in a file.",
    )
    secret_access_key: SecretStr | None = Field(
        default=None, examples=["..."],
        description="The secret of access_key_id. Never logged; `config show` masks it.",
    )
    connect_timeout: float = Field(default=5.0, gt=0, description="Seconds to open a connection.")
    read_timeout: float = Field(default=30.0, gt=0, description="Seconds to wait for a response.")
    max_attempts: int = Field(
        default=8, ge=1,
        description="Attempts per S3 call, retries included (1: no retries). Every call is retried on "
                    "throttling (503 SlowDown), 5xx, 409, timeouts and connection resets, with exponential "
                    "backoff and full jitter (0.1 s doubling, at most 10 s a wait); access, not-found and "
                    "other permanent errors are never retried. Failed polls and commits are tried again "
                    "later, so an outage delays work but never skips it.",
    )
    max_retry_time: float = Field(
        default=60.0, gt=0,
        description="Seconds one call may spend retrying: it stops when the next wait would pass this, "
                    "or after max_attempts, whichever comes first.",
    )
    max_connections: int | None = Field(
        default=None, ge=1, le=4096, examples=[10],
        description="Connections per pool to the store, for aiobotocore and for the lean request path "
                    "each. Unset: the consumer's concurrency + 8, the producer's concurrency + 4. "
                    "Requests beyond it wait.",
    )
    lean_path: bool = Field(
        default=True,
        description="Send GetObject, PutObject and listings over s3stream's lean signed-HTTP path "
                    "(false: through aiobotocore, slower).",
    )

    def resolved_endpoint(self, service: str = "s3") -> str | None:
        """The endpoint URL for ``service`` (``"s3"``, ``"sqs"``…), as botocore resolves it:
        ``AWS_ENDPOINT_URL_<SERVICE>`` (upper-cased, spaces and dashes as ``_``) wins, then the
        setting (``--endpoint-url``), then ``AWS_ENDPOINT_URL``; None means AWS itself."""
        name = "AWS_ENDPOINT_URL_" + service.upper().replace(" ", "_").replace("-", "_")
        return os.environ.get(name) or self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None


class CheckpointSettings(_Model):
    """Where each group's cursor is committed: an S3 object (default), a local file, or memory (not
    kept: `tail` and `chat`)."""

    store: Literal["s3", "file", "memory"] = Field(
        default="s3",
        description="\"s3\": a small JSON object per group and shard in the consumed bucket, under prefix, "
                    "written with If-None-Match/If-Match so two consumers of one group cannot silently "
                    "overwrite each other (needs s3:PutObject there; needed by leases). \"file\": a local "
                    "file per group and shard under directory, replaced atomically (a persistent volume "
                    "in containers; `--checkpoint-dir DIR`). \"memory\": nothing is kept.",
    )
    prefix: str = Field(
        default="_s3stream/checkpoints",
        description="The control prefix of the s3 store (<prefix>/<group>/…). Keys under it are never "
                    "delivered, even inside a consumed prefix.",
    )
    directory: str = Field(
        default=".s3stream/checkpoints",
        description="The folder of the file store, relative to the working directory unless absolute.",
    )
    interval: float = Field(
        default=1.0, gt=0,
        description="Seconds between commits while work completes: a consumer that goes idle commits at "
                    "once unless it committed less than this ago, then when it is this long; one more at "
                    "shutdown; none when nothing changed. After a crash, up to about this much work is "
                    "delivered again.",
    )


class LeaseSettings(_Model):
    """Consumer groups: members share a topic's shards by leases under the control prefix
    (`--lease-duration` turns them on)."""

    enabled: bool = Field(default=False, description="Share the shards with the group's other members.")
    duration: float = Field(
        default=30.0, ge=2,
        description="Seconds a lease lives without renewal: after a crash, the others take the member's "
                    "shards about this long later (`--lease-duration`).",
    )
    renew_interval: float | None = Field(
        default=None, gt=0, examples=[10.0],
        description="Seconds between renewals, at most half the duration. Unset: a third of the duration.",
    )
    member_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9._-]+$", examples=["consumer-0"],
        description="This member's name (`--member-id`), unique among running members. Unset: "
                    "<host>-<pid>-<random>. A fixed id (a StatefulSet pod's name) lets a restarted "
                    "member take its own leases back at once.",
    )

    @model_validator(mode="after")
    def _renew_within_duration(self) -> LeaseSettings:
        if self.renew_interval is not None and self.renew_interval * 2 > self.duration:
            raise ValueError("renew_interval: must be at most half of duration, so a renewal can fail "
                             "once without losing the lease")
        return self

    @property
    def every(self) -> float:
        return self.renew_interval or self.duration / 3


class ConsumerSettings(_Model):
    """The consumer's knobs. Times are seconds and may be fractional."""

    group: str = Field(
        default="default", min_length=1, pattern=r"^[A-Za-z0-9._-]+$",
        description="The consumer group: each group has its own checkpoint, so each group receives every "
                    "message. Without leases, run one process per group: a second one with the same "
                    "group and S3 checkpoints stops with a checkpoint conflict instead of overwriting.",
    )
    concurrency: int = Field(
        default=64, gt=0, le=1024,
        description="Workers fetching bodies and calling handlers in parallel. Different keys run in "
                    "parallel; one key's versions are always handled one at a time, oldest first.",
    )
    queue_size: int = Field(
        default=1000, gt=0,
        description="Most messages handed out and not finished (queued, waiting behind their key, or "
                    "running), across all sources. Listing pauses while it is full, so memory stays bounded.",
    )
    poll_interval: float | None = Field(
        default=None, gt=0, examples=[0.05],
        description="Seconds between polls while messages flow (a pass that filled a page is followed at "
                    "once). Each pass is about 1-3 LISTs per shard: raise it to trade latency for cost. "
                    "Unset: 0.01 in a directory bucket (S3 Express One Zone, where a message takes about "
                    "15 ms to publish, list and fetch), 0.05 elsewhere.",
    )
    max_poll_interval: float = Field(
        default=5.0, gt=0,
        description="Idle listings back off, doubling, up to this, on a prefix whose producers write no "
                    "head object (wakeup = \"listing\", or writers that are not s3stream): a new message "
                    "is delivered within about this long of becoming visible.",
    )
    wakeup: Literal["head", "listing"] = Field(
        default="head",
        description="How an idle consumer learns of new messages. \"head\" (the default): it reads the "
                    "topic's head object, which s3stream producers rewrite after publishing, with a "
                    "conditional GET every head_interval (a 304 costs one GET, far less than a LIST) and "
                    "lists at once when it changed, listing on its own every reconcile_interval; while "
                    "no producer writes a head it lists as with \"listing\" (and reads the missing head "
                    "at most every max_poll_interval). \"listing\": it only lists, backing off up to "
                    "max_poll_interval.",
    )
    head_interval: float | None = Field(
        default=None, gt=0, examples=[0.3],
        description="Seconds between two reads of a topic's head object (one GET per topic, shared by its "
                    "shards). Unset: 0.1 in a directory bucket (S3 Express One Zone), 0.3 elsewhere. A shard "
                    "whose listing just found messages keeps listing, backing off from poll_interval up "
                    "to this or 0.25 s, whichever is longer (divided by the listing requests of its "
                    "pass), before it waits for the head: a stream with short pauses is not slowed "
                    "down to the head's pace.",
    )
    reconcile_interval: float = Field(
        default=60.0, gt=0,
        description="With a head object: most seconds an idle shard goes without a listing of its own, "
                    "which finds what writers other than s3stream (aws s3 cp) stored without touching "
                    "the head. When such a listing finds messages, that shard backs off as without a "
                    "head (up to max_poll_interval) for ten reconcile intervals after.",
    )
    settle_window: float = Field(
        default=30.0, ge=0,
        description="How late, in seconds, a version may become visible compared with its LastModified "
                    "stamp and still be delivered; a later one is missed. S3 stamps a multipart upload "
                    "with the time it started, so set this above your slowest upload (300-900 for large "
                    "multipart objects). The cost of a larger window is checkpoint size (about write rate "
                    "x window entries), not latency. 0 is only safe in tests.",
    )
    start_from: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="Where a group without a checkpoint starts: \"earliest\" delivers every message "
                    "already stored; \"latest\" only those written afterwards. No effect once a "
                    "checkpoint exists (`--from`).",
    )
    page_size: int = Field(default=1000, gt=0, le=1000,
                           description="MaxKeys per listing request (S3 returns at most 1000).")
    handler_attempts: int = Field(
        default=5, ge=1,
        description="Calls of a handler that raises (or runs past handler_timeout) on one message before "
                    "it is dead-lettered (1: no retry; `--handler-attempts`).",
    )
    handler_retry_time: float = Field(
        default=60.0, ge=0,
        description="Seconds a failing message's attempts are spread over, the waits doubling: the last "
                    "comes this long after the first failure, so a downstream down for less than this "
                    "loses nothing. Other keys keep flowing meanwhile (`--handler-retry-time`).",
    )
    handler_timeout: float | None = Field(
        default=300.0, gt=0,
        description="Seconds one handler call may take; a call that runs over is cancelled and counts "
                    "as a failure.",
    )
    dead_letters: bool = Field(
        default=True,
        description="true: a message that keeps failing, or whose object cannot be read or decoded, is "
                    "written with the reason and traceback under _s3stream/dead-letters/<group>/ and the "
                    "stream moves on. false: the consumer stops (exit 1) without committing past it "
                    "(`--dead-letters/--no-dead-letters`).",
    )
    max_body_mb: int = Field(
        default=256, gt=0,
        description="An object larger than this many MiB is never read: it is dead-lettered with its size "
                    "and the limit (checked against the listed size, the Content-Length, and while reading).",
    )
    max_inflight_mb: int = Field(
        default=1024, gt=0,
        description="MiB of bodies the workers hold at once, by listed size: a fetch waits for room, and "
                    "an object larger than this runs alone.",
    )
    shutdown_grace: float = Field(
        default=30.0, ge=0,
        description="On SIGTERM/SIGINT polling stops and in-flight messages get this many seconds to "
                    "finish before the final checkpoint; what did not finish is delivered again next "
                    "time. Keep it under your orchestrator's stop timeout (Kubernetes: 30 s, docker stop: "
                    "10 s by default).",
    )
    checkpoint: CheckpointSettings = Field(default=CheckpointSettings(),
                                           description="Where cursors are committed.")
    leases: LeaseSettings = Field(default=LeaseSettings(), description="Consumer groups.")


class ProducerSettings(_Model):
    """The producer's knobs (`publish`, `chat`, `Producer`). Segments are on when
    segment_max_messages > 1 (log layout only)."""

    concurrency: int = Field(default=32, gt=0, le=1024, description="PUTs in flight at once.")
    segment_max_messages: int = Field(
        default=1, ge=1,
        description="Messages per segment object (log layout): above 1, many messages share one object, "
                    "far fewer requests per message.",
    )
    segment_max_bytes: int = Field(default=1 << 20, gt=0, description="A segment is written at this size "
                                   "in bytes (1 MiB).")
    linger: float = Field(default=0.05, ge=0, description="Most seconds a message waits in an open segment.")
    compression: Literal["none", "gzip", "zstd"] = Field(
        default="none",
        description="Compress each segment or plain object and set its Content-Encoding, which a source's "
                    "\"auto\" reads back.",
    )
    codec: str = Field(default="raw", description="How publish() turns a value into a body: raw, json, "
                       "text, csv, or a codec plugin's name. Bytes are always stored as given.")
    framing: Framing = Field(default="none", description="\"lines\": many messages per object, one a line; "
                             "\"none\": one message per object.")
    multipart_threshold: int = Field(default=16 << 20, ge=5 << 20,
                                     description="Bodies above this many bytes (16 MiB) are uploaded "
                                                 "in parts.")
    multipart_part_size: int = Field(default=8 << 20, ge=5 << 20,
                                     description="Size in bytes of each part of a multipart upload (8 MiB).")
    sse: Literal["AES256", "aws:kms", "aws:kms:dsse"] | None = Field(
        default=None, examples=["aws:kms"],
        description="Server-side encryption of the objects a producer writes. Unset: the bucket's default "
                    "encryption.",
    )
    sse_kms_key_id: str | None = Field(
        default=None, min_length=1, examples=["alias/my-key"],
        description="With sse = \"aws:kms\" (or \"aws:kms:dsse\"): the KMS key's id, ARN or alias. Unset: "
                    "the account's AWS managed key for S3.",
    )
    put_deadline: float = Field(
        default=10.0, gt=0,
        description="Log layout: seconds from the time in an object's name to its write's answer; a "
                    "slower write is made again under a new time. Keep it below consumers' settle_window.",
    )
    heads: bool = Field(
        default=True,
        description="Rewrite a topic's head object after publishing to it, so that idle consumers learn "
                    "of the message with a conditional GET instead of waiting for their next listing. "
                    "It costs PUTs: one per message at low rates, at most one per head_gap while "
                    "publishing steadily.",
    )
    head_gap: float = Field(
        default=0.25, ge=0,
        description="Least seconds between two writes of one topic's head by this producer: the first "
                    "message after a quiet spell is signalled at once, a burst costs one head write per "
                    "gap, and its last message is always signalled (at most this late).",
    )

    @model_validator(mode="after")
    def _kms_key_needs_kms(self) -> ProducerSettings:
        if self.sse_kms_key_id is not None and self.sse not in {"aws:kms", "aws:kms:dsse"}:
            raise ValueError('sse_kms_key_id: needs sse = "aws:kms" (or "aws:kms:dsse")')
        return self

    def encryption_headers(self) -> dict[str, str]:
        """The ``x-amz-server-side-encryption…`` headers of every object the producer writes."""
        headers: dict[str, str] = {"x-amz-server-side-encryption": self.sse} if self.sse else {}
        if self.sse_kms_key_id:
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.sse_kms_key_id
        return headers

    @field_validator("codec")
    @classmethod
    def _codec(cls, value: str) -> str:
        return check_codec(value)


class MetricsSettings(_Model):
    """The HTTP endpoint for /metrics, /healthz and /readyz (off unless a port is set)."""

    port: int | None = Field(default=None, ge=0, le=65535, examples=[9464],
                             description="Serve metrics and health on this port (`--metrics-port`).")
    host: str = Field(default="127.0.0.1", description="The address to listen on (0.0.0.0 in a container).")
    ready_after: float = Field(default=60.0, gt=0, description="/readyz fails when a shard has not "
                               "completed a poll for this many seconds.")


class TracingSettings(_Model):
    """OpenTelemetry spans per consumed message, and trace context carried from producers. Needs
    `pip install 's3stream[otel]'`; your application sets up the SDK and its exporter."""

    enabled: bool = Field(default=False, description="Trace messages with the OpenTelemetry API.")

    @field_validator("enabled")
    @classmethod
    def _api_installed(cls, value: bool) -> bool:
        if value:
            from s3stream.service.tracing import require_api

            require_api()
        return value
