"""``s3stream doctor`` and the conditional-write check of consumers with leases.

The verdict logic (what each setup needs) is checked as pure functions. The command runs as a real
process against moto and SeaweedFS (and the emulator's S3 Express profile for directory buckets);
a store that ignores conditional writes is a proxy in front of moto that strips ``If-Match`` and
``If-None-Match`` from every request. ``docs/backends.md`` is checked against what doctor measures.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from pathlib import Path

import orjson
import pytest

from benchmarks.emulator import run_emulator
from s3stream.config import build_settings
from s3stream.message import Entry
from s3stream.ops.doctor import (
    DELETE_MARKERS,
    FEATURES,
    IF_MATCH,
    IF_NONE_MATCH,
    LIST_ORDER,
    VERSION_PAGING,
    VERSIONING,
    Result,
    Setup,
    conditional_writes,
    needs,
    verdict,
)
from s3stream.ops.doctorprobes import CACHE_KEY, check_markers, check_paging
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests.conftest import Recorder, cli_command, new_bucket_name, running
from tests.s3proxy import Rule, S3Proxy, StripHeaders

DOC = Path(__file__).resolve().parent.parent / "docs" / "backends.md"
MEASURED = {"moto": "moto", "seaweedfs": "SeaweedFS"}  # fixture param -> the doc's column


def doctor(endpoint: str, url: str, *args: str, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """Run ``s3stream doctor URL`` as a process against ``endpoint``."""
    return subprocess.run(cli_command("doctor", url, "--endpoint-url", endpoint, *args),
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


def outcomes(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """The ``--json`` report's results, feature -> outcome."""
    return {row["feature"]: row["result"] for row in orjson.loads(proc.stdout)["results"]}


def assert_one_line(stderr: str, *words: str) -> None:
    """stderr is exactly one line, with no traceback, containing each of ``words``."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for word in words:
        assert word in lines[0], lines[0]


def documented_column(column: str) -> dict[str, str]:
    """The measured column ``column`` of the matrix in docs/backends.md, feature -> outcome."""
    header: list[str] = []
    rows: dict[str, str] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == "feature":
            header = cells
        elif header and len(cells) == len(header) and (m := re.fullmatch(r"`([a-z-]+)`", cells[0])):
            rows[m.group(1)] = cells[header.index(column)]
    return rows


# --- pure: what each setup needs ---------------------------------------------------------------


def test_needs_follow_the_layout_and_leases() -> None:
    """The versions layout needs versioning and version paging, the objects layout key order, the log
    layout put-if-absent, and leases both conditional writes, whatever the layout."""
    assert list(needs(Setup("versions"))) == [VERSIONING, VERSION_PAGING]
    assert list(needs(Setup("objects"))) == [LIST_ORDER]
    assert list(needs(Setup("log"))) == [IF_NONE_MATCH]
    assert list(needs(Setup("versions", leases=True))) == [VERSIONING, VERSION_PAGING, IF_NONE_MATCH,
                                                          IF_MATCH]
    assert list(needs(Setup("log", leases=True))) == [IF_NONE_MATCH, IF_MATCH]
    assert "leases" in needs(Setup("log", leases=True))[IF_NONE_MATCH]


def test_verdict_names_the_first_missing_feature_and_why() -> None:
    """Every needed feature ``yes`` is exit 0 (other rows may say no); a needed one that is ``no``,
    ``error`` or not probed is exit 1 with one line naming it, what was seen and the reason."""
    rows = [Result(f.name, "yes") for f in FEATURES]
    assert verdict(rows, Setup("versions", leases=True)).exit_code == 0
    no_cas = [r if r.feature != IF_MATCH else Result(IF_MATCH, "no", "stale ETag accepted") for r in rows]
    assert verdict(no_cas, Setup("versions")).exit_code == 0
    judged = verdict(no_cas, Setup("versions", leases=True))
    assert judged.exit_code == 1
    assert judged.line.startswith("if-match is missing (no: stale ETag accepted)")
    assert "consumer-group leases" in judged.line
    assert "\n" not in judged.line
    errored = [r if r.feature != VERSIONING else Result(VERSIONING, "error", "timed out") for r in rows]
    assert verdict(errored, Setup("versions")).line.startswith("versioning is missing (error: timed out)")
    assert verdict([], Setup("log")).line.startswith("if-none-match is missing (not probed)")


def test_conditional_writes_verdict_needs_both_probes() -> None:
    """The verdict a consumer caches is ``yes`` only when both conditional writes are enforced."""
    yes = [Result(IF_NONE_MATCH, "yes"), Result(IF_MATCH, "yes")]
    assert conditional_writes(yes).outcome == "yes"
    assert conditional_writes([yes[0], Result(IF_MATCH, "no", "ignored")]).detail == "if-match: ignored"
    assert conditional_writes([Result(IF_NONE_MATCH, "error", "x"), yes[1]]).outcome == "error"
    assert conditional_writes(yes[:1]).outcome == "error"


def _entry(key: str, vid: str, deleted: bool = False) -> Entry:
    return Entry(key=key, version_id=vid, last_modified_ms=0, deleted=deleted)


def test_version_paging_checks_once_each_in_order() -> None:
    """A listing is judged against what was written: duplicates, missing versions, a wrong order and
    markers that never move on are each ``no``; keys ascending, newest first, each once is ``yes``."""
    written = {"p/a": ["a1", "a2"], "p/b": ["b1"]}
    good = [_entry("p/a", "m", deleted=True), _entry("p/a", "a2"), _entry("p/a", "a1"), _entry("p/b", "b1")]
    assert check_paging(good, written, 4).outcome == "yes"
    assert "twice" in check_paging([*good, _entry("p/b", "b1")], written, 5).detail
    assert "1 of 3 versions missing" in check_paging(good[:3], written, 3).detail
    assert "not keys ascending" in check_paging([good[0], good[2], good[1], good[3]], written, 4).detail
    assert check_paging(good, written, 65).outcome == "no"
    assert check_markers(good, "p/a", "m", written["p/a"]).detail.startswith("listed once, before")
    assert check_markers(good[1:], "p/a", "m", written["p/a"]).outcome == "no"
    assert check_markers([*good, _entry("p/b", "m2", deleted=True)], "p/a", "m", []).outcome == "no"


# --- the command against real servers ------------------------------------------------------------


async def _versioned_bucket(store: Store) -> str:
    name = new_bucket_name("doc")
    await store.create_bucket(name, versioning=True)
    return name


async def test_doctor_on_each_server_matches_the_documented_matrix(
        s3_endpoint: str, store: Store, request: pytest.FixtureRequest) -> None:
    """On a versioned bucket every probe answers as docs/backends.md says for this server (all yes
    on moto and SeaweedFS, directory n.a.); exit 0; the scratch objects are gone and the conditional
    verdict is cached."""
    bucket = await _versioned_bucket(store)
    proc = await asyncio.to_thread(doctor, s3_endpoint, f"s3://{bucket}/events", "--json", "--leases")
    assert proc.returncode == 0, proc.stderr
    found = outcomes(proc)
    column = MEASURED[request.node.callspec.params["s3_endpoint"]]
    assert found == documented_column(column)
    assert [f.name for f in FEATURES] == list(found)
    assert {f: o for f, o in found.items() if o != "yes"} == {"directory-bucket": "n.a."}
    report = orjson.loads(proc.stdout)
    assert report["setup"] == {"layout": "versions", "leases": True}
    left = await store.list_versions(bucket, "_s3stream/doctor/")
    assert [e.key for e in left.entries] == [CACHE_KEY]
    assert orjson.loads((await store.get_object(bucket, CACHE_KEY)).body)["result"] == "yes"


async def test_text_table_and_a_missing_feature(store: Store, moto_endpoint: str, tmp: Path) -> None:
    """The table has a row per feature (over aiobotocore too: lean path off); an unversioned bucket
    judged for the versions layout exits 1 with one line naming versioning and why; detected, its
    layout is objects and it passes."""
    bucket = new_bucket_name("plain")
    await store.create_bucket(bucket, versioning=False)
    proc = await asyncio.to_thread(doctor, moto_endpoint, f"s3://{bucket}/t", "--layout", "versions")
    assert proc.returncode == 1
    assert_one_line(proc.stderr, "versioning is missing", "never enabled", "versions layout")
    rows = {line.split()[0]: line.split()[1] for line in proc.stdout.splitlines()[1:]
            if line[:1].strip() and not line.startswith("setup:")}
    assert rows == {VERSIONING: "no", VERSION_PAGING: "n.a.", DELETE_MARKERS: "n.a.", IF_NONE_MATCH: "yes",
                    IF_MATCH: "yes", LIST_ORDER: "yes", "directory-bucket": "n.a.", "clock-skew": "yes"}
    config = tmp / "lean-off.toml"
    config.write_text("[s3]\nlean_path = false\n", encoding="utf-8")
    detected = await asyncio.to_thread(doctor, moto_endpoint, f"s3://{bucket}/t", "--config", str(config))
    assert detected.returncode == 0, detected.stderr
    assert "setup: objects layout" in detected.stdout
    assert detected.stdout.splitlines()[-1].startswith("ok: ")


def test_setup_errors_are_one_line_and_exit_2(moto_endpoint: str, seaweedfs_url: str) -> None:
    """A bad URL, a missing bucket, credentials the store refuses (SeaweedFS checks them) and an
    endpoint that refuses connections each give one line: exit 2, and 3 for the unreachable one."""
    bad = doctor(moto_endpoint, "http://bucket/prefix")
    assert bad.returncode == 2
    assert_one_line(bad.stderr, "expected s3://BUCKET/PREFIX")
    missing = doctor(moto_endpoint, "s3://no-such-bucket-here/t")
    assert missing.returncode == 2
    assert_one_line(missing.stderr, "'no-such-bucket-here' does not exist")
    denied = doctor(seaweedfs_url, "s3://any-bucket/t", env={"AWS_SECRET_ACCESS_KEY": "wrong"})
    assert denied.returncode == 2
    assert_one_line(denied.stderr, "was denied", "credentials")
    unreachable = doctor("http://127.0.0.1:9", "s3://bucket/t")
    assert unreachable.returncode == 3  # the exit status of an unreachable endpoint
    assert_one_line(unreachable.stderr, "cannot reach the S3 endpoint")


@pytest.mark.e2e
def test_directory_bucket_on_the_express_emulator() -> None:
    """In an S3 Express directory bucket: CreateSession works, no versioning, listings not in key
    order and StartAfter refused; the detected layout (log) only needs put-if-absent: exit 0."""
    with run_emulator("express", verify_signatures=True, latency_ms=0) as emu:
        bucket = f"{new_bucket_name('dir')}--use1-az4--x-s3"
        created = subprocess.run(cli_command("bucket", "create", bucket, "--endpoint-url", emu.url),
                                 capture_output=True, text=True, timeout=60, check=False)
        assert created.returncode == 0, created.stderr
        proc = doctor(emu.url, f"s3://{bucket}/events", "--json")
        assert emu.stats()["signatures"].get("rejected", 0) == 0
    assert proc.returncode == 0, proc.stderr
    found = outcomes(proc)
    assert found["directory-bucket"] == "yes"
    assert (found[VERSIONING], found[VERSION_PAGING], found[LIST_ORDER]) == ("no", "n.a.", "no")
    assert (found[IF_NONE_MATCH], found[IF_MATCH]) == ("yes", "yes")
    assert orjson.loads(proc.stdout)["setup"] == {"layout": "log", "leases": False}


# --- a store that ignores conditions ---------------------------------------------------------------


def _stripping(endpoint: str) -> S3Proxy:
    return S3Proxy(endpoint, [Rule(StripHeaders(("If-Match", "If-None-Match")))])


async def test_a_store_ignoring_conditions_is_refused(store: Store, moto_endpoint: str, tmp: Path) -> None:
    """Behind a proxy that drops If-Match and If-None-Match, doctor reports both probes ``no`` and
    exits 1 for a config with leases; ``consume`` with leases refuses to start with one line, exit 2,
    and leaves no scratch objects."""
    bucket = await _versioned_bucket(store)
    config = tmp / "leases.toml"
    config.write_text("[consumer.leases]\nenabled = true\n", encoding="utf-8")
    with _stripping(moto_endpoint) as proxy:
        proc = await asyncio.to_thread(doctor, proxy.endpoint, f"s3://{bucket}/t", "--json",
                                       "--config", str(config))
        consume = await asyncio.to_thread(
            subprocess.run, cli_command("consume", f"s3://{bucket}/t", "--lease-duration", "6",
                                        "--endpoint-url", proxy.endpoint),
            capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    found = outcomes(proc)
    assert (found[IF_NONE_MATCH], found[IF_MATCH]) == ("no", "no")
    assert found[VERSIONING] == found[VERSION_PAGING] == "yes"
    assert_one_line(proc.stderr, "if-none-match is missing", "accepted", "consumer-group leases")
    assert consume.returncode == 2
    assert_one_line(consume.stderr, f"bucket {bucket!r}", "does not enforce conditional writes", "leases")
    left = await store.list_versions(bucket, "_s3stream/doctor/")
    assert [e.key for e in left.entries if not e.key.startswith("_s3stream/doctor/conditional")] == []
    assert orjson.loads((await store.get_object(bucket, CACHE_KEY)).body)["result"] == "no"


def _doctor_requests(proxy: S3Proxy, bucket: str) -> list[tuple[str, str]]:
    prefix = f"/{bucket}/_s3stream/doctor/"
    return [(method, path) for method, path, _ in proxy.requests if path.startswith(prefix)]


async def test_consumer_probes_once_then_reads_the_cached_verdict(store: Store, moto_endpoint: str) -> None:
    """The first consumer with leases on a bucket probes conditional writes and caches the verdict;
    the next start costs one GET of it and writes no probe object."""
    bucket = await _versioned_bucket(store)
    counts: list[list[tuple[str, str]]] = []
    with S3Proxy(moto_endpoint) as proxy:
        settings = build_settings({
            "s3": {"endpoint_url": proxy.endpoint, "addressing_style": "path"},
            "consumer": {"poll_interval": 0.05, "shutdown_grace": 1.0,
                         "leases": {"enabled": True, "duration": 6.0, "member_id": "m1"}},
            "sources": [{"url": f"s3://{bucket}/t/", "handler": "rec"}],
        })
        for _ in range(2):
            proxy.requests.clear()
            consumer = Consumer(settings)
            consumer.register_handler("rec", Recorder())
            async with running(consumer):
                pass
            counts.append(_doctor_requests(proxy, bucket))
    first, second = counts
    assert sum(1 for method, path in first if method == "PUT" and "conditional-writes" not in path) >= 5
    assert ("PUT", f"/{bucket}/{CACHE_KEY}") in first
    assert second == [("GET", f"/{bucket}/{CACHE_KEY}")]
