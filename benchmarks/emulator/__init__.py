"""An in-memory S3 emulator for benchmarks: one process, a plain asyncio HTTP/1.1 protocol on uvloop
(keep-alive), every bucket and object held in memory.

What it is: enough of the S3 API for s3stream's benchmark scenarios, with S3's semantics where they
matter to s3stream (whole-second ``LastModified``, versions and delete markers interleaved in
``ListObjectVersions``, conditional writes, multipart objects dated by the start of their upload) and
three profiles:

- ``zero``: no added latency, no limits, general-purpose buckets.
- ``express`` (S3 Express One Zone): about 5 ms per request; buckets named ``*--x-s3`` are directory
  buckets: no versioning (501), ``ListObjectsV2`` pages shuffled, ``start-after`` refused, a prefix
  with a delimiter must end in ``/``, ETags that are not MD5. ``CreateSession`` issues credentials.
- ``standard`` (S3 Standard): about 25 ms to first byte and per-prefix request rates (3,500
  PUT/POST/DELETE and 5,500 GET/HEAD per second) beyond which it answers ``503 SlowDown``.

``--verify-signatures`` recomputes every request's SigV4 signature with botocore's own signer
(independently of s3stream's code) and answers ``403 SignatureDoesNotMatch`` on a mismatch.

What it is not: a general S3. No ListBuckets, ListObjects (V1), CopyObject, ranges, ACLs, policies,
tagging, lifecycle, encryption, checksums (sent ones are ignored), presigned URLs, a delimiter in
ListObjectVersions, session expiry, or persistence; unknown operations answer ``501 NotImplemented``.
moto remains the correctness reference; this is the endpoint that is not the bottleneck.

Control endpoints (never buckets): ``GET /_emulator/stats``, ``POST /_emulator/reset[?data=1]``,
``POST /_emulator/seed``. Start it with ``python -m benchmarks.emulator --profile zero`` (prints
``READY http://127.0.0.1:PORT``) or, from Python, ``with run_emulator("express") as emu:``.

Performance: the emulator shares the benchmark machine's cores with the clients it measures, so it
spends as little CPU per request as it can. Its server is a plain protocol (:mod:`.wire`) rather than
aiohttp's server, which spent most of the emulator's CPU per request; consuming one-message
objects with s3stream (8 shards, zero profile), side by side on a loaded 2-core AMD EPYC, the emulator
spent 87-99 µs of CPU per message against 139-150 µs with aiohttp's server. Listings remember each
key's rendered text, since a consumer lists a shard's keys again on each pass. With
``--verify-signatures`` each request costs about 85 µs more (botocore's signer).

The package: :mod:`~benchmarks.emulator.state` (buckets, versions, sorted keys, uploads, sessions),
:mod:`~benchmarks.emulator.objects` and :mod:`~benchmarks.emulator.buckets` (the operations),
:mod:`~benchmarks.emulator.calls` (routing, bodies, answers), :mod:`~benchmarks.emulator.sigcheck`
(``--verify-signatures``), :mod:`~benchmarks.emulator.documents` (the XML documents),
:mod:`~benchmarks.emulator.server` (profiles, request flow, rate limits, latency, the command line),
:mod:`~benchmarks.emulator.wire` (the HTTP/1.1 server) and :mod:`~benchmarks.emulator.process` (the
subprocess runner).
"""

from benchmarks.emulator.process import EmulatorError, EmulatorProcess, run_emulator
from benchmarks.emulator.process import _await_ready as _await_ready
from benchmarks.emulator.server import PROFILES, EmulatorServer, Profile, main, start_emulator_server

__all__ = [
    "PROFILES",
    "EmulatorError",
    "EmulatorProcess",
    "EmulatorServer",
    "Profile",
    "main",
    "run_emulator",
    "start_emulator_server",
]
