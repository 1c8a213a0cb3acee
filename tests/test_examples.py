"""``examples/aws-cli-walkthrough.sh``: the AWS CLI walkthrough with s3stream commands, run for real.

Against the session's moto server it must show the walkthrough's states (the latest id-1 is value 002, its
history 001 then 002, the interleaved updates consumed in per-key order, a resumed group sees only
what is new) and leave no bucket. Started without an endpoint it runs its own dev-server, and
interrupting it stops every process it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s3stream.errors import BucketNotFound
from s3stream.s3.store import Store
from tests.conftest import new_bucket_name
from tests.test_cli import child_env

SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "aws-cli-walkthrough.sh"
TIMEOUT = 240.0  # the walkthrough takes about 20 s alone, over a minute beside other tests


def script_env(**extra: str) -> dict[str, str]:
    """The child environment with this interpreter's ``s3stream`` first on PATH."""
    env = child_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def sections(output: str) -> dict[str, list[str]]:
    """The script's output split at its ``## Title`` lines: title → the lines under it."""
    out: dict[str, list[str]] = {}
    current = "preamble"
    for line in output.splitlines():
        if line.startswith("## "):
            current = line[3:]
            out[current] = []
        elif line:
            out.setdefault(current, []).append(line)
    return out


def section(parts: dict[str, list[str]], start: str) -> list[str]:
    return next(lines for title, lines in parts.items() if title.startswith(start))


def values_by_key(bodies: list[str]) -> dict[str, list[str]]:
    """``{"id": ..., "value": ...}`` bodies grouped by id, values in order of appearance."""
    out: dict[str, list[str]] = {}
    for body in bodies:
        doc = json.loads(body)
        out.setdefault(doc["id"], []).append(doc["value"])
    return out


@pytest.mark.slow
async def test_walkthrough_against_moto(store: Store, moto_endpoint: str, tmp_path: Path) -> None:
    """The script exits 0 and its output shows the walkthrough's expected states at each step, and the
    bucket is gone at the end."""
    bucket = new_bucket_name("walkthrough")
    env = script_env(AWS_ENDPOINT_URL=moto_endpoint, BUCKET=bucket)
    result = await asyncio.to_thread(subprocess.run, ["bash", str(SCRIPT)], env=env, cwd=tmp_path,
                                     capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    parts = sections(result.stdout)
    assert any("does not exist" in line for line in section(parts, "Starting with nothing"))
    assert section(parts, "Starting with nothing")[-1] == "(exit code 2)"
    published = section(parts, "Publish messages")
    assert [line.split()[0] for line in published] == ["topic/00/id-1.json"] * 2 + ["topic/00/id-2.json"]
    history = section(parts, "Consume all the states")
    assert [line.split("  ")[1] for line in history] == [line.split()[1] for line in published[:2]]
    assert values_by_key([line.split("  ")[2] for line in history]) == {"1": ["001", "002"]}
    assert section(parts, "Read the latest state") == ['{"id": "1", "value": "002"}']

    live = section(parts, "Consume and begin polling")
    consumed = [json.loads(line) for line in live if line.startswith("{\"bucket\"")]
    assert values_by_key([r["body"] for r in consumed]) == {"1": ["001", "002", "003", "004"],
                                                          "2": ["001", "003", "004"]}
    tailed = live[live.index("tail (bodies of the new messages):") + 1:]
    assert values_by_key(tailed) == {"1": ["003", "004"], "2": ["003", "004"]}
    assert re.search(r"^group walkthrough: checkpoints 1/1, .*unconsumed 0",
                     "\n".join(section(parts, "The group's checkpoint")), re.M)
    resumed = [json.loads(line) for line in section(parts, "Resume consumption")]
    assert values_by_key([r["body"] for r in resumed]) == {"3": ["003", "004"], "4": ["003", "004"]}

    decommission = section(parts, "Decommission")
    assert re.fullmatch(rf"deleted \d+ versions and delete markers and bucket {bucket}", decommission[0])
    assert "does not exist" in decommission[1]
    assert decommission[2] == "(exit code 2)"
    with pytest.raises(BucketNotFound):
        await store.check_bucket(bucket)


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def descendants(pid: int) -> dict[tuple[int, str], str]:
    """Every live process below ``pid``: (pid, start time) → command line."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(entry.name)
        if fields is not None:
            parents[int(entry.name)] = (int(fields[1]), fields[19])
    found: dict[tuple[int, str], str] = {}
    frontier = {pid}
    while frontier:
        frontier = {child for child, (parent, _) in parents.items() if parent in frontier}
        for child in frontier:
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                found[(child, parents[child][1])] = cmdline
    return found


def alive(proc: tuple[int, str]) -> bool:
    """True while that very process (same pid and start time) runs."""
    fields = _stat(proc[0])
    return fields is not None and fields[19] == proc[1] and fields[0] != "Z"


@pytest.mark.e2e
def test_walkthrough_starts_its_own_server_and_cleans_up_when_interrupted(tmp_path: Path) -> None:
    """Without AWS_ENDPOINT_URL the script starts ``s3stream dev-server`` itself and walks through the
    first steps on it; SIGTERM while its consumer and tail run in the background ends the script, and
    the processes it started (dev-server, consume, tail) are all gone."""
    out = tmp_path / "out.txt"
    with out.open("wb") as sink:
        proc = subprocess.Popen(["bash", str(SCRIPT)], env=script_env(BUCKET="self-served"), cwd=tmp_path,
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "(consumer has the 3 existing messages" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.05)
        running = descendants(proc.pid)
        text = out.read_text()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "(started s3stream dev-server at http://127.0.0.1:" in text
    assert section(sections(text), "Read the latest state") == ['{"id": "1", "value": "002"}']
    assert code == 130, out.read_text()
    for command in ("s3stream dev-server", "s3stream --log-level warning consume", "s3stream tail"):
        assert any(command in cmdline for cmdline in running.values()), (command, running)
    deadline = time.monotonic() + TIMEOUT
    while any(alive(p) for p in running):
        assert time.monotonic() < deadline, [running[p] for p in running if alive(p)]
        time.sleep(0.05)
