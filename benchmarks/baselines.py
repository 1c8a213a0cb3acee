"""Baseline consumers for the benchmark suite: what users run instead of s3stream.

Each baseline consumes "one message per object version" from a **versioned** bucket: it lists
the versions under a prefix (``ListObjectVersions``, every page) and fetches each version's body
(``GetObject`` with ``VersionId``), handing it to a trivial handler that counts its bytes. All
three return a :class:`BaselineResult` and raise (never hang) when they cannot finish within
``timeout`` seconds:

* :func:`awscli_loop`: the AWS CLI walkthrough's consumer, a bash loop of ``aws s3api`` commands, one Python
  interpreter per request. The AWS CLI (v1, from PyPI) lives in its own venv built on first use by
  :func:`ensure_awscli`, because it pins an exact botocore that conflicts with aiobotocore's.
  Because each ``aws`` call costs ~0.5-1 s, it fetches at most ``limit`` versions and marks the
  result extrapolated (the rate messages/seconds holds).
* :func:`boto3_sequential`: one boto3 client, every page listed, then one GET at a time.
* :func:`aiobotocore_queue`: one lister task feeding an ``asyncio.Queue``, ``concurrency`` worker
  tasks fetching from it; :func:`run_aiobotocore_queue` runs it on uvloop when that is installed.

Credentials come from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (the benchmark sets
``testing``/``testing``); the region is us-east-1 with path-style addressing at ``endpoint``.

``cpu_seconds`` is the client's CPU: ``getrusage(RUSAGE_CHILDREN)`` deltas for the AWS CLI (the
bash loop and every ``aws`` and ``jq`` process under it), ``time.process_time()`` deltas for the
in-process baselines. The latter counts every thread of this process, so with an in-process S3
server (moto) it includes the server's CPU; the note then gives this thread's CPU as well.
``requests`` counts the HTTP requests sent to S3 (retries included) for the in-process baselines;
for the AWS CLI it is the ``ListObjectVersions`` pages the CLI fetches (counted by an untimed boto3
listing beforehand) plus one ``GetObject`` per fetched version.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_AWSCLI_VENV = HERE / ".awscli-venv"
REGION = "us-east-1"
AWSCLI_INSTALL_TIMEOUT = 900.0
Version = tuple[str, str]  # (key, version id)


@dataclass
class BaselineResult:
    """One run of a baseline consumer."""

    name: str  # e.g. "AWS CLI walkthrough loop"
    messages: int  # messages actually fetched
    seconds: float  # wall time
    cpu_seconds: float  # client CPU used (this process + children; see the module docstring)
    requests: int  # S3 requests made
    extrapolated: bool  # True when the count was capped and the rate extrapolated
    note: str = ""
    body_bytes: int = field(default=0)  # what the handler counted: the bodies' total size

    @property
    def rate(self) -> float:
        """Messages per second (the number to extrapolate from when ``extrapolated``)."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0


class AwsCliUnavailable(RuntimeError):
    """The AWS CLI could not be installed or does not run; the AWS CLI baseline cannot run here."""


def count_bytes(body: bytes) -> int:
    """The baselines' handler: the least work a handler can do with a body."""
    return len(body)


# --- shared helpers ---------------------------------------------------------------------------


def _credentials() -> tuple[str, str]:
    try:
        return os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    except KeyError:
        raise RuntimeError(
            "the baselines read credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; set both "
            "(testing/testing for moto)"
        ) from None


def _client_kwargs(endpoint: str) -> dict[str, Any]:
    key_id, secret = _credentials()
    return {
        "endpoint_url": endpoint, "region_name": REGION,
        "aws_access_key_id": key_id, "aws_secret_access_key": secret,
    }


def _config_kwargs(timeout: float, pool: int) -> dict[str, Any]:
    """botocore Config options: path style, 3 attempts, per-request timeouts well inside ``timeout``."""
    per_request = min(max(timeout / 4, 0.5), 60.0)
    return {
        "s3": {"addressing_style": "path"},
        "retries": {"mode": "standard", "total_max_attempts": 3},
        "connect_timeout": per_request, "read_timeout": per_request,
        "max_pool_connections": pool,
    }


class _RequestCounter:
    """A botocore ``before-send`` hook: counts the HTTP requests a client sends (retries included)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, **_: Any) -> None:
        self.count += 1


def _cpu_note(thread_cpu: float) -> str:
    return f"this thread's CPU {thread_cpu:.2f} s (process CPU includes an in-process S3 server's)"


# --- boto3, sequential ------------------------------------------------------------------------


def _list_versions_boto3(client: Any, bucket: str, prefix: str, limit: int | None,
                         deadline: float) -> tuple[list[Version], bool, int]:
    """Every version under ``prefix`` (at most ``limit``): ``(versions, capped, pages)``."""
    versions: list[Version] = []
    pages = 0
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        pages += 1
        versions.extend((v["Key"], v["VersionId"]) for v in page.get("Versions", []))
        if limit is not None and len(versions) >= limit:
            return versions[:limit], len(versions) > limit or bool(page.get("IsTruncated")), pages
        if time.monotonic() > deadline:
            raise TimeoutError(f"listing s3://{bucket}/{prefix} took longer than the timeout")
    return versions, False, pages


def _boto3_client(endpoint: str, timeout: float, pool: int = 10) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(**_config_kwargs(timeout, pool)), **_client_kwargs(endpoint))


def boto3_sequential(endpoint: str, bucket: str, prefix: str, *, limit: int | None = None,
                     timeout: float = 300) -> BaselineResult:
    """One boto3 client: list every page of versions, then GET each version, one at a time.

    With ``limit`` it stops listing once it has that many versions and fetches only those. Raises
    :class:`TimeoutError` once ``timeout`` has passed (checked between requests) or when S3 does not
    answer a request (each is bounded: 3 attempts of at most ``timeout / 4`` s, capped at 60 s).
    """
    from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

    deadline = time.monotonic() + timeout
    cpu0, thread0, started = time.process_time(), time.thread_time(), time.perf_counter()
    client = _boto3_client(endpoint, timeout)
    counter = _RequestCounter()
    client.meta.events.register("before-send.s3", counter)
    size = fetched = 0
    try:
        versions, capped, _ = _list_versions_boto3(client, bucket, prefix, limit, deadline)
        for key, version_id in versions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"boto3_sequential: {fetched} of {len(versions)} versions in {timeout} s")
            response = client.get_object(Bucket=bucket, Key=key, VersionId=version_id)
            size += count_bytes(response["Body"].read())
            fetched += 1
    except (ConnectTimeoutError, ReadTimeoutError) as exc:
        raise TimeoutError(f"boto3_sequential: S3 at {endpoint} did not answer in time: {exc}") from exc
    finally:
        client.close()
    return BaselineResult(
        name="boto3 sequential", messages=fetched, seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu0, requests=counter.count, extrapolated=capped,
        note=_cpu_note(time.thread_time() - thread0), body_bytes=size,
    )


# --- aiobotocore, a queue and workers ---------------------------------------------------------


@dataclass
class _QueueState:
    fetched: int = 0
    size: int = 0
    listed: int = 0
    capped: bool = False


async def _lister(client: Any, bucket: str, prefix: str, limit: int | None, workers: int,
                  queue: asyncio.Queue[Version | None], state: _QueueState) -> None:
    """Put every version under ``prefix`` (at most ``limit``) on the queue, then one stop per worker."""
    paginator = client.get_paginator("list_object_versions")
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        entries = page.get("Versions", [])
        if limit is not None:
            room = limit - state.listed
            state.capped = len(entries) > room or (len(entries) == room and bool(page.get("IsTruncated")))
            entries = entries[:room]
        for entry in entries:
            await queue.put((entry["Key"], entry["VersionId"]))
            state.listed += 1
        if limit is not None and state.listed >= limit:
            break
    for _ in range(workers):
        await queue.put(None)


async def _worker(client: Any, bucket: str, queue: asyncio.Queue[Version | None],
                  state: _QueueState) -> None:
    """GET each version taken off the queue and hand its body to the handler, until a stop."""
    while (item := await queue.get()) is not None:
        key, version_id = item
        response = await client.get_object(Bucket=bucket, Key=key, VersionId=version_id)
        async with response["Body"] as stream:
            body = await stream.read()
        state.size += count_bytes(body)
        state.fetched += 1


async def aiobotocore_queue(endpoint: str, bucket: str, prefix: str, *, concurrency: int = 64,
                            queue_size: int = 1000, limit: int | None = None,
                            timeout: float = 300) -> BaselineResult:  # noqa: ASYNC109 (the suite's shape)
    """A lister task and ``concurrency`` GET workers around an ``asyncio.Queue``; no checkpoints."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    if concurrency < 1 or queue_size < 1:
        raise ValueError("concurrency and queue_size must be at least 1")
    cpu0, thread0, started = time.process_time(), time.thread_time(), time.perf_counter()
    state, counter = _QueueState(), _RequestCounter()
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    try:
        async with asyncio.timeout(timeout):
            config = AioConfig(**_config_kwargs(timeout, concurrency))
            async with get_session().create_client("s3", config=config, **_client_kwargs(endpoint)) as client:
                client.meta.events.register("before-send.s3", counter)
                queue: asyncio.Queue[Version | None] = asyncio.Queue(maxsize=queue_size)
                async with asyncio.TaskGroup() as group:
                    group.create_task(_lister(client, bucket, prefix, limit, concurrency, queue, state))
                    for _ in range(concurrency):
                        group.create_task(_worker(client, bucket, queue, state))
    except TimeoutError:
        raise TimeoutError(
            f"aiobotocore_queue: not done within {timeout} s ({state.fetched} of {state.listed} listed "
            "versions fetched)"
        ) from None
    return BaselineResult(
        name=f"aiobotocore queue (concurrency {concurrency})", messages=state.fetched,
        seconds=time.perf_counter() - started, cpu_seconds=time.process_time() - cpu0,
        requests=counter.count, extrapolated=state.capped, body_bytes=state.size,
        note=f"{loop_name} loop; {_cpu_note(time.thread_time() - thread0)}",
    )


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_aiobotocore_queue(endpoint: str, bucket: str, prefix: str, **options: Any) -> BaselineResult:
    """Run :func:`aiobotocore_queue` to completion on a new event loop, uvloop's if installed."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(aiobotocore_queue(endpoint, bucket, prefix, **options))


# --- the AWS CLI ------------------------------------------------------------------------------


def _awscli_env(aws: Path, work: Path) -> dict[str, str]:
    """The environment for ``aws``: our venv first on PATH, no real AWS config, fixed region."""
    drop = ("AWS_", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    env = {name: value for name, value in os.environ.items() if not name.startswith(drop)}
    config = work / "aws-config"
    config.write_text(f"[default]\nregion = {REGION}\ns3 =\n    addressing_style = path\n")
    env.update(
        PATH=f"{aws.parent}{os.pathsep}{env.get('PATH', '')}",
        AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_DEFAULT_REGION=REGION, AWS_REGION=REGION, AWS_EC2_METADATA_DISABLED="true", AWS_PAGER="",
        NO_PROXY=",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"])),
    )
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if name in os.environ:  # the only AWS_ settings passed through
            env[name] = os.environ[name]
    return env


def _install_hint(cache_dir: Path) -> str:
    return (
        f"install it by hand into its own venv: python3 -m venv {cache_dir} && "
        f"{cache_dir}/bin/pip install awscli (not into s3stream's venv: awscli pins an exact botocore "
        "that conflicts with aiobotocore's)"
    )


def _build_awscli_venv(cache_dir: Path) -> None:
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(cache_dir)],
        [str(cache_dir / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", "awscli"],
    ]
    for argv in steps:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=AWSCLI_INSTALL_TIMEOUT,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            hint = _install_hint(cache_dir)
            raise AwsCliUnavailable(f"could not run {' '.join(argv)}: {exc}; {hint}") from exc
        if done.returncode != 0:
            output = (done.stderr or done.stdout).strip()[-2000:]
            raise AwsCliUnavailable(
                f"{' '.join(argv)} failed (exit {done.returncode}): {output}\n{_install_hint(cache_dir)}"
            )


@functools.cache
def awscli_version(aws: Path) -> str:
    """``aws --version`` run with the isolated environment the baseline uses (no real AWS config)."""
    with tempfile.TemporaryDirectory(prefix="s3stream-awscli-") as tmp:
        try:
            done = subprocess.run([str(aws), "--version"], capture_output=True, text=True, timeout=60,
                                  env=_awscli_env(aws, Path(tmp)), cwd=tmp, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AwsCliUnavailable(f"{aws} --version did not run: {exc}") from exc
    if done.returncode != 0 or not done.stdout.startswith("aws-cli/"):
        raise AwsCliUnavailable(f"{aws} --version failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout.split()[0]


def ensure_awscli(cache_dir: Path = DEFAULT_AWSCLI_VENV) -> Path:
    """The ``aws`` executable of a venv at ``cache_dir`` holding the AWS CLI v1, built on first use.

    Raises :class:`AwsCliUnavailable`, saying how to install it by hand, when that fails.
    """
    cache_dir = cache_dir.resolve()
    aws, marker = cache_dir / "bin" / "aws", cache_dir / ".s3stream-complete"
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = cache_dir.with_name(cache_dir.name + ".lock")
    with lock_path.open("w") as lock:  # one builder at a time; the others wait and reuse it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.exists() and aws.exists()):
            _build_awscli_venv(cache_dir)
            if not aws.exists():
                hint = _install_hint(cache_dir)
                raise AwsCliUnavailable(f"pip installed awscli but {aws} is missing; {hint}")
            marker.write_text("awscli installed by benchmarks/baselines.py\n")
    awscli_version(aws)
    return aws


# The AWS CLI walkthrough, "Consume and begin polling for new messages": one pass of its `while true; ...
# sleep 1`
# loop body, verbatim but for: the bucket, prefix and endpoint as arguments (+ --endpoint-url on each
# call), the item list capped at LIMIT (`.[:LIMIT][]` for the seed's `.[]`), `set -uo pipefail`
# and `|| exit 1` so a failing list fails the run, and one line appended to ./fetched.txt per body
# fetched (so the caller can count them; the bodies themselves go to stdout, as the seed's `cat`).
AWSCLI_LOOP_JQ = r"""
set -uo pipefail
BUCKET="$1"; PREFIX="$2"; ENDPOINT="$3"; LIMIT="$4"
last_modified_file="./last_modified.txt"
if [ ! -f "${last_modified_file?}" ]; then
  echo "1970-01-01T00:00:00Z" > "${last_modified_file?}"
fi
last_modified=$(cat "$last_modified_file")
new_versions=$(aws s3api list-object-versions \
  --bucket "${BUCKET?}" \
  --prefix "${PREFIX?}" \
  --endpoint-url "${ENDPOINT?}" \
  --query "sort_by(Versions[?LastModified > \`${last_modified?}\`], &LastModified)" \
  --output json) || exit 1
echo "$new_versions" | jq -c ".[:${LIMIT?}][]" | while read -r item; do
  key=$(echo "${item?}" | jq -r '.Key')
  version=$(echo "${item?}" | jq -r '.VersionId')
  last_modified=$(echo "${item?}" | jq -r '.LastModified')
  aws s3api get-object --bucket "${BUCKET?}" \
    --key "${key?}" \
    --version-id "${version?}" \
    --endpoint-url "${ENDPOINT?}" \
    ./id-tmp.json > /dev/null && \
    cat ./id-tmp.json && \
    rm ./id-tmp.json && \
    echo "${version?}" >> ./fetched.txt
  echo "${last_modified?}" > "${last_modified_file?}"
done
"""

# The same pass without jq: the fields come from `--query ...[Key, VersionId, LastModified]
# --output text`, one tab-separated line per version. (The CLI applies a query to each page of text
# output, so beyond 1,000 versions the order is per page; with LIMIT that small it does not matter.)
AWSCLI_LOOP_TEXT = r"""
set -uo pipefail
BUCKET="$1"; PREFIX="$2"; ENDPOINT="$3"; LIMIT="$4"
last_modified_file="./last_modified.txt"
if [ ! -f "${last_modified_file?}" ]; then
  echo "1970-01-01T00:00:00Z" > "${last_modified_file?}"
fi
last_modified=$(cat "$last_modified_file")
new_versions=$(aws s3api list-object-versions \
  --bucket "${BUCKET?}" \
  --prefix "${PREFIX?}" \
  --endpoint-url "${ENDPOINT?}" \
  --query "sort_by(Versions[?LastModified > \`${last_modified?}\`], &LastModified)\
[:${LIMIT?}].[Key, VersionId, LastModified]" \
  --output text) || exit 1
count=0
while IFS=$'\t' read -r key version last_modified; do
  [ "$count" -lt "${LIMIT?}" ] || break
  count=$((count + 1))
  aws s3api get-object --bucket "${BUCKET?}" \
    --key "${key?}" \
    --version-id "${version?}" \
    --endpoint-url "${ENDPOINT?}" \
    ./id-tmp.json > /dev/null && \
    cat ./id-tmp.json && \
    rm ./id-tmp.json && \
    echo "${version?}" >> ./fetched.txt
  echo "${last_modified?}" > "${last_modified_file?}"
done <<< "$new_versions"
"""


def _have_jq() -> bool:
    return shutil.which("jq") is not None


@dataclass
class _ScriptRun:
    stdout: bytes
    seconds: float
    cpu_seconds: float


def _run_script(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> _ScriptRun:
    """Run ``argv`` in its own process group; its wall time and its (and its children's) CPU."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the loop and the aws/jq processes under it
        proc.communicate()
        raise TimeoutError(f"the AWS CLI loop did not finish within {timeout} s; killed it") from None
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = err.decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"the AWS CLI loop failed (exit {proc.returncode}): {tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return _ScriptRun(out, seconds, cpu)


def _survey(endpoint: str, bucket: str, prefix: str, timeout: float) -> tuple[int, int]:
    """Untimed: ``(versions, pages)`` under ``prefix``, as the CLI's own listing will see them."""
    client = _boto3_client(endpoint, timeout)
    try:
        versions, _, pages = _list_versions_boto3(client, bucket, prefix, None, time.monotonic() + timeout)
    finally:
        client.close()
    return len(versions), pages


def awscli_loop(endpoint: str, bucket: str, prefix: str, *, limit: int = 20,
                timeout: float = 120) -> BaselineResult:
    """The AWS CLI walkthrough's consumer: one ``list-object-versions``, then one ``aws s3api get-object``
    per version.

    Fetches at most ``limit`` versions (the oldest first, as the seed sorts them) and marks the
    result extrapolated when there were more. Raises :class:`AwsCliUnavailable` without the CLI.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    _credentials()
    aws = ensure_awscli()
    version = awscli_version(aws)
    total, pages = _survey(endpoint, bucket, prefix, timeout)
    if total == 0:
        raise RuntimeError(f"no versions under s3://{bucket}/{prefix}; nothing to consume")
    use_jq = _have_jq()
    with tempfile.TemporaryDirectory(prefix="s3stream-awscli-") as tmp:
        work = Path(tmp)
        script = work / "consume.sh"
        script.write_text(AWSCLI_LOOP_JQ if use_jq else AWSCLI_LOOP_TEXT)
        run = _run_script(["bash", str(script), bucket, prefix, endpoint, str(limit)], work,
                          _awscli_env(aws, work), timeout)
        done = work / "fetched.txt"
        fetched = len(done.read_text().split()) if done.exists() else 0
    expected = min(limit, total)
    if fetched == 0:
        raise RuntimeError(f"the AWS CLI loop fetched none of {expected} versions")
    how = "jq" if use_jq else "no jq installed: --query ... --output text instead of the seed's jq"
    if fetched < expected:  # the seed's loop itself skipped versions: report it, rate from what it did
        how += f"; the loop delivered only {fetched} of the {expected} versions it listed"
    return BaselineResult(
        name="AWS CLI walkthrough loop", messages=fetched, seconds=run.seconds,
        cpu_seconds=run.cpu_seconds, requests=pages + fetched, extrapolated=total > limit,
        note=f"{version}; {fetched} of {total} versions, one aws process per request; {how}",
        body_bytes=len(run.stdout),
    )
