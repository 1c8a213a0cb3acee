"""Running s3stream in production: the metrics and health endpoint, signals and shutdown, config
checking, and what the logs contain (DESIGN.md promises 3 and 9).

Subprocess tests run the real ``s3stream`` CLI against the session's moto server. Their handlers live
in a small module written to a temporary folder and put on ``PYTHONPATH`` (``opshandlers:slow``...):
they note each call in a JSON-lines file named by ``OPS_EVENTS``, so the test can see a message start
and finish.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from s3stream.config import Settings, build_settings
from s3stream.message import Message
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests.conftest import Recorder, cli_command, wait_until
from tests.s3proxy import Delay, Rule, S3Proxy

HANDLERS = '''
import asyncio
import json
import os


def _note(event, message):
    with open(os.environ["OPS_EVENTS"], "a") as fh:
        fh.write(json.dumps({"event": event, "key": message.key, "version_id": message.version_id}) + "\\n")


async def slow(message):
    """Takes OPS_SLEEP seconds (default 1) per message."""
    _note("start", message)
    await asyncio.sleep(float(os.environ.get("OPS_SLEEP", "1")))
    _note("done", message)


async def refuse_poison(message):
    """Refuses every message whose key ends in "poison" (without quoting its body)."""
    if message.key.endswith("poison"):
        raise ValueError("refused by the test handler")
    _note("done", message)
'''

SECRET = "Sekrit-Ops-3f9a1c77e0"


@pytest.fixture
def handlers_dir(tmp_path: Path) -> Path:
    """A folder holding the ``opshandlers`` module."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "opshandlers.py").write_text(HANDLERS)
    return folder


def child_env(handlers_dir: Path, events: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: handlers importable, events file, JSON logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3STREAM_")}
    path = [str(handlers_dir), str(Path(__file__).resolve().parents[1])]
    env.update({"PYTHONPATH": os.pathsep.join([*path, env.get("PYTHONPATH", "")]),
                "OPS_EVENTS": str(events), "S3STREAM_LOG_LEVEL": "info", **extra})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def events(path: Path) -> list[dict[str, str]]:
    """The handler calls noted so far."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def consumer_config(tmp: Path, endpoint: str, **consumer: Any) -> Path:
    """A TOML config: fast polling, frequent checkpoints, ``[consumer]`` extras."""
    extra = "".join(f"{k} = {orjson.dumps(v).decode()}\n" for k, v in consumer.items())
    cfg = tmp / "consumer.toml"
    cfg.write_text(
        f'[s3]\nendpoint_url = "{endpoint}"\naddressing_style = "path"\n'
        f'access_key_id = "testing"\nsecret_access_key = "{SECRET}"\n'
        "[consumer]\npoll_interval = 0.05\nmax_poll_interval = 0.2\nsettle_window = 2\n" + extra +
        "[consumer.checkpoint]\ninterval = 0.2\n"
    )
    return cfg


async def put_keys(store: Store, bucket: str, keys: list[str], body: bytes = b"x") -> dict[str, str]:
    """One version of each key; the version id per key."""
    out = {}
    for key in keys:
        _, vid = await store.put_object(bucket, key, body)
        out[key] = str(vid)
    return out


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(
        url, timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        return resp.status, await resp.text()


async def answers(url: str, status: int = 200) -> bool:
    """Whether ``url`` answers ``status`` right now (False while nothing listens)."""
    try:
        return (await http_get(url))[0] == status
    except (aiohttp.ClientError, OSError):
        return False


def listening_on(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* shows them) with a socket listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for row in fh.readlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by name and sorted labels."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def settings(endpoint: str, url: str, **sections: Any) -> Settings:
    return build_settings({
        "s3": {"endpoint_url": endpoint, "addressing_style": "path"},
        "consumer": {"poll_interval": 0.05, "max_poll_interval": 0.2, "settle_window": 2.0,
                     "checkpoint": {"interval": 0.1}},
        "sources": [{"url": url, "handler": "rec"}],
        **sections,
    })


@pytest.fixture
def slow_start_proxy(moto_endpoint: str) -> Iterator[S3Proxy]:
    """moto behind a proxy that holds the first HEAD (the consumer's bucket check) for 1.5 s."""
    with S3Proxy(moto_endpoint, [Rule(Delay(1.5), method="HEAD", first=1)]) as proxy:
        yield proxy


def start_consumer(bucket: str, prefix: str, cfg: Path, env: dict[str, str], err: Path,
                   handler: str = "opshandlers:slow", *options: str) -> subprocess.Popen[bytes]:
    """``s3stream consume`` in the background, its stderr appended to ``err`` (not a terminal)."""
    with err.open("ab") as stderr:
        return subprocess.Popen(
            cli_command("consume", f"s3://{bucket}/{prefix}", "--handler", handler, "--config", str(cfg),
                        *options),
            env=env, stdout=subprocess.DEVNULL, stderr=stderr)


# --- the metrics and health endpoint -------------------------------------------------------------


async def test_metrics_and_health_endpoints(store: Store, bucket: str, slow_start_proxy: S3Proxy) -> None:
    """With ``[metrics] port = 0`` the consumer serves on a free port of 127.0.0.1 only: /healthz is
    200 throughout; /readyz is 503 while the consumer is still starting, 200 once it runs and 503
    again while it drains after stop(); /metrics exposes this shard's consumed messages, queue depth,
    lag, S3 requests by operation, checkpoint commits and handler durations; after the consumer
    returns, nothing listens any more."""
    url = f"s3://{bucket}/m/"
    shard = (("bucket", bucket), ("group", "default"), ("shard", "0"), ("topic", "m"))
    written = await put_keys(store, bucket, [f"m/k{i:02d}" for i in range(20)])
    gate = asyncio.Event()
    entered = asyncio.Event()
    rec = Recorder()

    async def handler(message: Message) -> None:
        if message.key == "m/zz-gate":
            entered.set()
            await gate.wait()
        await rec(message)

    consumer = Consumer(settings(slow_start_proxy.endpoint, url, metrics={"port": 0}))
    consumer.register_handler("rec", handler)
    task = asyncio.create_task(consumer.run())
    try:
        await wait_until(lambda: consumer.health is not None and consumer.health.port != 0,
                         what="health server listening")
        health = consumer.health
        assert health is not None
        base = f"http://127.0.0.1:{health.port}"
        status, body = await http_get(f"{base}/readyz")
        assert not consumer.started.is_set()  # so the answer above came before the start
        assert status == 503
        assert orjson.loads(body)["status"] == "not ready"
        assert (await http_get(f"{base}/healthz"))[0] == 200
        assert listening_on(health.port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0 or ::

        await rec.wait_for(lambda: {m.key for m in rec.messages} >= set(written))
        assert consumer.started.is_set()
        status, body = await http_get(f"{base}/readyz")
        assert (status, orjson.loads(body)["status"]) == (200, "ready")
        assert (await http_get(f"{base}/healthz"))[0] == 200

        found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

        async def exposed() -> bool:
            status, text = await http_get(f"{base}/metrics")
            found.clear()
            found.update(samples(text))
            return status == 200 and found.get(
                ("s3stream_checkpoint_commits_total", shard), 0) >= 1
        await wait_until(exposed, what="a checkpoint commit in /metrics")
        assert found[("s3stream_messages_consumed_total", shard)] == 20
        assert ("s3stream_queue_depth", ()) in found
        assert ("s3stream_lag_seconds", shard) in found
        assert found[("s3stream_s3_requests_total", (("operation", "ListObjectVersions"),))] >= 1
        assert found[("s3stream_handler_duration_seconds_count", (("handler", "rec"),))] >= 20
        assert ("s3stream_handler_duration_seconds_bucket", (("handler", "rec"), ("le", "+Inf"))) in found
        _, text = await http_get(f"{base}/metrics")
        assert 's3stream_s3_requests_total{operation="ListObjectVersions"}' in text

        await store.put_object(bucket, "m/zz-gate", b"hold")
        async with asyncio.timeout(30):
            await entered.wait()
        consumer.stop()
        status, body = await http_get(f"{base}/readyz")  # draining the held message
        assert (status, orjson.loads(body)["detail"]) == (503, "stopping")
        assert (await http_get(f"{base}/healthz"))[0] == 200
        gate.set()
        async with asyncio.timeout(30):
            await task
    finally:
        gate.set()
        consumer.stop()
        if not task.done():
            task.cancel()
    assert "m/zz-gate" in {m.key for m in rec.messages}
    assert not await answers(f"{base}/healthz")


async def test_cli_consume_serves_health_and_exits_0_on_sigterm(
    store: Store, bucket: str, moto_endpoint: str, tmp_path: Path, handlers_dir: Path
) -> None:
    """``s3stream consume --metrics-port P`` answers /healthz and /readyz on P while it runs and exits
    0 on SIGTERM."""
    port = free_port()
    ev = tmp_path / "events.jsonl"
    await put_keys(store, bucket, ["h/a", "h/b"])
    cfg = consumer_config(tmp_path, moto_endpoint)
    err = tmp_path / "stderr.log"
    proc = start_consumer(bucket, "h/", cfg, child_env(handlers_dir, ev), err,
                          "opshandlers:refuse_poison", "--metrics-port", str(port))
    try:
        await wait_until(lambda: answers(f"http://127.0.0.1:{port}/healthz") if proc.poll() is None
                         else True, within=30, what="/healthz")
        assert proc.poll() is None, err.read_text()
        await wait_until(lambda: answers(f"http://127.0.0.1:{port}/readyz"), within=30, what="/readyz")
        await wait_until(lambda: len(events(ev)) == 2, what="both messages handled")
        status, text = await http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        labels = f'bucket="{bucket}",group="default",shard="0",topic="h"'
        assert f"s3stream_messages_consumed_total{{{labels}}} 2.0" in text
        proc.send_signal(signal.SIGTERM)
        await wait_until(lambda: proc.poll() is not None, within=30, what="exit after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.read_text()
    assert not await answers(f"http://127.0.0.1:{port}/healthz")


# --- signals and shutdown ------------------------------------------------------------------------




async def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, within: float = 30) -> float:
    """Send ``sig`` and wait for the process to exit; returns the seconds it took."""
    started = time.monotonic()
    proc.send_signal(sig)
    await wait_until(lambda: proc.poll() is not None, within=within, what=f"exit after signal {sig}")
    return time.monotonic() - started


async def test_sigterm_finishes_in_flight_work_commits_and_exits_0(
    store: Store, bucket: str, moto_endpoint: str, tmp_path: Path, handlers_dir: Path
) -> None:
    """SIGTERM arrives while a 1 s handler is mid-message: the process lets every started message
    finish within the grace period, commits and exits 0. A restarted consumer delivers only what is
    new (a sentinel), nothing that was delivered before."""
    ev, err = tmp_path / "events.jsonl", tmp_path / "stderr.log"
    written = await put_keys(store, bucket, [f"g/k{i}" for i in range(6)])
    cfg = consumer_config(tmp_path, moto_endpoint, concurrency=2, shutdown_grace=15)
    env = child_env(handlers_dir, ev, OPS_SLEEP="1")
    proc = start_consumer(bucket, "g/", cfg, env, err)
    try:
        await wait_until(lambda: any(e["event"] == "start" for e in events(ev)), what="a message started")
        assert not any(e["event"] == "done" for e in events(ev))  # SIGTERM lands mid-message
        took = await stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.read_text()
    assert took < 15
    first = events(ev)
    started = Counter((e["key"], e["version_id"]) for e in first if e["event"] == "start")
    done = Counter((e["key"], e["version_id"]) for e in first if e["event"] == "done")
    assert started
    assert started == done  # nothing cut off mid-message

    proc = start_consumer(bucket, "g/", cfg, env, err)
    try:
        sentinel = await put_keys(store, bucket, ["g/~sentinel"])
        await wait_until(lambda: ("g/~sentinel", sentinel["g/~sentinel"]) in {
            (e["key"], e["version_id"]) for e in events(ev) if e["event"] == "done"}, what="sentinel")
        await stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.read_text()
    total = Counter((e["key"], e["version_id"]) for e in events(ev) if e["event"] == "done")
    assert set(total) == {*written.items(), *sentinel.items()}
    assert max(total.values()) == 1, total


async def test_second_sigint_exits_at_once_with_130(
    store: Store, bucket: str, moto_endpoint: str, tmp_path: Path, handlers_dir: Path
) -> None:
    """A first SIGINT starts a graceful drain of a 60 s handler; a second SIGINT during the drain ends
    the process at once with exit code 130, without waiting for the handler."""
    ev, err = tmp_path / "events.jsonl", tmp_path / "stderr.log"
    await put_keys(store, bucket, ["i/long"])
    cfg = consumer_config(tmp_path, moto_endpoint, shutdown_grace=120)
    proc = start_consumer(bucket, "i/", cfg, child_env(handlers_dir, ev, OPS_SLEEP="60"), err)
    try:
        await wait_until(lambda: any(e["event"] == "start" for e in events(ev)), what="handler started")
        proc.send_signal(signal.SIGINT)
        await wait_until(lambda: b"draining" in err.read_bytes(), what="drain begun")
        assert proc.poll() is None  # still draining the 60 s handler
        took = await stop(proc, signal.SIGINT, within=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.read_text()
    assert took < 5
    assert [e["event"] for e in events(ev)] == ["start"]


# --- config check and show -----------------------------------------------------------------------

GOOD = f"""
[s3]
endpoint_url = "http://127.0.0.1:9"
access_key_id = "AKIAOPSTEST"
secret_access_key = "{SECRET}"

[consumer]
concurrency = 4

[[sources]]
url = "s3://bucket/prefix/"
handler = "stdout"
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("S3STREAM_")}
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})})


def test_config_check_accepts_a_good_file(tmp_path: Path) -> None:
    """``config check`` on a valid file exits 0 and says so."""
    cfg = tmp_path / "good.toml"
    cfg.write_text(GOOD)
    result = run_cli("config", "check", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_config_check_names_a_bad_field_in_one_line(tmp_path: Path) -> None:
    """``[consumer] concurrency = -1`` makes ``config check`` exit 2 with one stderr line naming
    ``consumer.concurrency``."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text(GOOD.replace("concurrency = 4", "concurrency = -1"))
    result = run_cli("config", "check", str(cfg))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "consumer.concurrency" in lines[0]
    assert "Traceback" not in result.stderr


def test_config_check_names_a_bad_environment_override(tmp_path: Path) -> None:
    """``S3STREAM_CONSUMER__CONCURRENCY=-1`` over a good file makes ``config check`` exit 2 with one
    line naming both the field and the variable it came from."""
    cfg = tmp_path / "good.toml"
    cfg.write_text(GOOD)
    result = run_cli("config", "check", str(cfg), env={"S3STREAM_CONSUMER__CONCURRENCY": "-1"})
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "consumer.concurrency" in lines[0]
    assert "S3STREAM_CONSUMER__CONCURRENCY" in lines[0]


def test_config_check_rejects_an_unknown_handler(tmp_path: Path) -> None:
    """A source naming a handler that exists neither as entry point nor as ``module:attr`` makes
    ``config check`` exit 2 naming it."""
    cfg = tmp_path / "handler.toml"
    cfg.write_text(GOOD.replace('handler = "stdout"', 'handler = "no-such-handler"'))
    result = run_cli("config", "check", str(cfg))
    assert result.returncode == 2
    assert "no-such-handler" in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr


def test_config_show_applies_overrides_and_masks_the_secret(tmp_path: Path) -> None:
    """``config show FILE`` prints the effective config as JSON: the file, then S3STREAM_… overrides
    (concurrency 7, region eu-west-1); the secret access key is masked and appears nowhere in the
    output, whether it came from the file or from the environment."""
    cfg = tmp_path / "good.toml"
    cfg.write_text(GOOD)
    result = run_cli("config", "show", str(cfg), env={"S3STREAM_CONSUMER__CONCURRENCY": "7",
                                                      "S3STREAM_S3__REGION": "eu-west-1"})
    assert result.returncode == 0, result.stderr
    doc = orjson.loads(result.stdout)
    assert doc["consumer"]["concurrency"] == 7
    assert doc["s3"]["region"] == "eu-west-1"
    assert doc["s3"]["access_key_id"] == "AKIAOPSTEST"
    assert doc["s3"]["secret_access_key"] == "**********"
    assert SECRET not in result.stdout + result.stderr

    other = "env-Secret-77e1b0"
    result = run_cli("config", "show", str(cfg), env={"S3STREAM_S3__SECRET_ACCESS_KEY": other})
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["s3"]["secret_access_key"] == "**********"
    assert other not in result.stdout + result.stderr
    assert SECRET not in result.stdout


def test_config_errors_never_echo_a_secret(tmp_path: Path) -> None:
    """A secret access key of the wrong type is reported by field name without its value."""
    cfg = tmp_path / "secret.toml"
    cfg.write_text(GOOD.replace(f'secret_access_key = "{SECRET}"', "secret_access_key = 987654321123"))
    result = run_cli("config", "check", str(cfg))
    assert result.returncode == 2
    assert "s3.secret_access_key" in result.stderr
    assert "987654321123" not in result.stderr


# --- logs ----------------------------------------------------------------------------------------


async def test_logs_are_json_lines_with_context_and_without_bodies_or_secrets(
    store: Store, bucket: str, moto_endpoint: str, tmp_path: Path, handlers_dir: Path
) -> None:
    """A consumer whose stderr is not a terminal logs JSON lines only (at debug level too). The line
    for a dead-lettered message carries its shard, key and version id; no line contains a message
    body or the configured secret access key."""
    ev, err = tmp_path / "events.jsonl", tmp_path / "stderr.log"
    body = b"BODY-MARKER-c41d9e"
    written = await put_keys(store, bucket, ["j/a", "j/b", "j/c"], body)
    poison = await put_keys(store, bucket, ["j/x-poison"], body)
    cfg = consumer_config(tmp_path, moto_endpoint, handler_attempts=2, handler_retry_time=0.2)
    env = child_env(handlers_dir, ev, S3STREAM_LOG_LEVEL="debug")
    proc = start_consumer(bucket, "j/", cfg, env, err, handler="opshandlers:refuse_poison")
    try:
        await wait_until(lambda: len(events(ev)) == 3 and b"dead-lettered" in err.read_bytes(),
                         what="three handled, one dead-lettered")
        await stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.read_text()
    assert {(e["key"], e["version_id"]) for e in events(ev)} == set(written.items())
    raw = err.read_bytes()
    lines = [orjson.loads(line) for line in raw.splitlines()]  # every line is a JSON object
    assert len(lines) > 3
    assert all(isinstance(doc, dict) and "event" in doc and "level" in doc for doc in lines)
    [dead] = [doc for doc in lines if doc["event"] == "dead-lettered"]
    assert dead["shard"] == f"s3://{bucket}/j/"
    assert dead["key"] == "j/x-poison"
    assert dead["version_id"] == poison["j/x-poison"]
    assert dead["attempts"] == 2
    assert body not in raw
    assert SECRET.encode() not in raw
