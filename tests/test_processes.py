"""``s3stream consume --processes N``: N members of one consumer group in child processes of one command.

The children's command lines are checked as a pure function; the rest runs the real command as a
subprocess against the session's moto server: the children split the shards, handle every message
once between them, and stop cleanly on SIGTERM; bad use is one line and exit 2.
"""

from __future__ import annotations

import asyncio
import io
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from s3stream.cli.members import child_commands, strip_options
from s3stream.cli.runopts import MEMBER_STATUS_ENV, serve_with_status
from s3stream.config import build_settings
from s3stream.groups.membership import group_prefix
from s3stream.layouts.topics import create_topic
from s3stream.pipeline.consumer import Consumer
from s3stream.s3.store import Store
from tests.conftest import cli_command, wait_until
from tests.test_groups import balanced, held_by, publish

SHARDS = 4


def test_each_child_gets_its_own_member_id_leases_and_metrics_port() -> None:
    """The children run the same command without ``--processes``; each gets a member id of its own
    (the given id plus its number), ``--lease-duration`` when leases were off, and the metrics port
    plus its number; ``--member-id``/``--metrics-port`` given as ``--name=value`` are replaced too."""
    args = ["consume", "s3://b/t", "--processes", "3", "--member-id=box", "--metrics-port", "9100",
            "--group", "g"]
    settings = build_settings({"consumer": {"leases": {"member_id": "box"}}, "metrics": {"port": 9100}})
    commands = child_commands(3, settings, args)
    assert strip_options(args) == ["consume", "s3://b/t", "--group", "g"]
    for number, command in enumerate(commands):
        assert command[:3] == [sys.executable, "-m", "s3stream"]
        assert command[3:] == ["consume", "s3://b/t", "--group", "g", "--lease-duration", "30.0",
                               "--member-id", f"box-{number}", "--metrics-port", str(9100 + number)]
    with_leases = build_settings({"consumer": {"leases": {"enabled": True}}})
    given = child_commands(2, with_leases, ["consume", "s3://b/t", "--lease-duration", "9"])
    assert [c.count("--lease-duration") for c in given] == [1, 1]  # the one given, kept
    assert len({c[-1] for c in given}) == 2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("child", "prefix"), [(True, "status box-1: "), (False, "status: ")])
async def test_a_child_status_line_names_its_member(monkeypatch: pytest.MonkeyPatch, child: bool,
                                                    prefix: str) -> None:
    """On a terminal, the status line of a ``--processes`` child starts with its member id, so N
    children's lines can be told apart; a consumer run on its own keeps the plain ``status:``."""
    monkeypatch.setenv("S3STREAM_STATUS_INTERVAL", "0.05")
    if child:
        monkeypatch.setenv(MEMBER_STATUS_ENV, "1")
    else:
        monkeypatch.delenv(MEMBER_STATUS_ENV, raising=False)
    settings = build_settings({"sources": [{"url": "s3://b/t"}],
                               "consumer": {"leases": {"enabled": True, "member_id": "box-1"}}})
    out = Terminal()

    async def serve(_: Consumer) -> None:
        await wait_until(lambda: "\n" in out.getvalue(), 10, "a status line")

    await serve_with_status(Consumer(settings), serve, file=out)
    assert out.getvalue().startswith(prefix), out.getvalue()


@pytest.mark.parametrize("argv", [
    ["consume", "s3://b/t", "--processes", "0"],
    ["consume", "s3://b/t", "--processes", "2", "--checkpoint-dir", "{tmp}"],
    ["run", "--config", "{tmp}/c.toml", "--processes", "-1"],
])
def test_bad_use_of_processes_is_one_line_and_exit_2(tmp_path: Path, argv: list[str]) -> None:
    """``consume``/``run`` with ``--processes`` below 1, or with a local checkpoint folder, are refused
    before anything starts: one line on stderr naming the option, exit code 2."""
    (tmp_path / "c.toml").write_text('[[sources]]\nurl = "s3://b/t"\n')
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = subprocess.run(cli_command(*args, "--endpoint-url", "http://127.0.0.1:9"),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("s3stream: error:")
    assert "--processes" in done.stderr
    assert done.stderr.count("\n") == 1


def _start(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)


def _handled(out: Path) -> list[dict[str, object]]:
    if not out.exists():
        return []
    return [orjson.loads(line) for line in out.read_bytes().splitlines() if b'"ev":"start"' in line]


async def _leases(store: Store, bucket: str) -> list[object]:
    page = await store.list_objects(bucket, f"{group_prefix('g')}leases/")
    return [orjson.loads((await store.get_object(bucket, e.key)).body)["owner"] for e in page.entries]


async def test_two_processes_share_the_topic_exactly_once_and_sigterm_stops_both(
        store: Store, bucket: str, moto_endpoint: str, tmp_path: Path) -> None:
    """``consume --processes 2`` runs two members with distinct ids (neither is the command itself) that
    split the four shards 2/2; every message published is handled exactly once between them, and by both
    processes. SIGTERM to the command reaches both children, which drain, release their leases and
    delete their member records; the command exits 0."""
    await create_topic(store, bucket, "orders", shards=SHARDS)
    url = f"s3://{bucket}/orders"
    out, cfg, log = tmp_path / "handled.jsonl", tmp_path / "group.toml", tmp_path / "members.log"
    cfg.write_text(
        f'[s3]\nendpoint_url = "{moto_endpoint}"\naddressing_style = "path"\n'
        '[consumer]\ngroup = "g"\nconcurrency = 8\npoll_interval = 0.1\nmax_poll_interval = 1\n'
        "settle_window = 1\nshutdown_grace = 5\n[consumer.checkpoint]\ninterval = 0.2\n"
        "[consumer.leases]\nrenew_interval = 1\n"
        f'[handlers.rec]\nuse = "tests.chaos_handler:make"\npath = "{out}"\nmember = "child"\n')
    proc = _start(cli_command("consume", url, "--handler", "rec", "--config", str(cfg),
                              "--lease-duration", "3", "--processes", "2"), log)
    try:
        async def split() -> bool:
            held = await held_by(store, bucket)
            return len(held) == 2 and balanced(held, SHARDS)

        await wait_until(split, within=60, what="two members holding 2 shards each")
        members = set(await held_by(store, bucket))
        sent = await publish(moto_endpoint, url, range(80))

        async def all_handled() -> bool:
            return {(str(d["key"]).rsplit("/", 1)[1], str(d["body"]).encode()) for d in _handled(out)} >= sent

        await wait_until(all_handled, within=60, what="all 80 messages handled")
        handled = _handled(out)
        twice = [body for body, n in Counter(str(d["body"]) for d in handled).items() if n > 1]
        assert not twice, "handled twice"
        assert len(handled) == len(sent)
        pids = {d["pid"] for d in handled}
        assert len(pids) == 2
        assert proc.pid not in pids
        assert len(members) == 2
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, log.read_text()[-2000:]
    assert await _leases(store, bucket) == [None] * SHARDS
    assert await held_by(store, bucket) == {}
