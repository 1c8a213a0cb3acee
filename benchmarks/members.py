"""Consumer groups on one host: a backlog consumed by one member against two, each member a process.

Every member is the real command, ``python -m s3stream consume URL --lease-duration D`` with the
:class:`Progress` handler (``--handler benchmarks.members:Progress``), which writes
``<pid> <count> <first> <last> <cpu>`` (its process, its messages so far, the wall-clock times of its
first and latest one, its CPU seconds from the first to the latest) to standard output at most every
50 ms. The measurement reads those lines from every
member until the whole backlog is counted, then stops the members with SIGTERM. Two ways to run two members:

- ``separate``: two ``s3stream consume`` processes, started together, each with its own member id;
- ``processes``: one ``s3stream consume --processes 2``, which starts and supervises the two.

The rate is the backlog over the time from the first message any member handled to the last one
(process start-up, the first rebalance and the lease takes before it are left out; lease churn after it,
a member giving shards up to the other, is in). ``spawn_s`` is the whole time from starting the
processes, for comparison.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from s3stream.message import Message

ROOT = Path(__file__).resolve().parents[1]
FLUSH_EVERY = 0.05
Mode = Literal["one", "separate", "processes"]


class Progress:
    """The members' handler: counts messages and reports on standard output at most every 50 ms."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.count = 0
        self.first = self.last = self.cpu_first = self.cpu_last = 0.0
        self._scheduled = False

    async def handle(self, message: Message) -> None:
        self.last, self.cpu_last = time.time(), time.process_time()
        if self.count == 0:
            self.first, self.cpu_first = self.last, self.cpu_last
        self.count += 1
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(FLUSH_EVERY, self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        cpu = self.cpu_last - self.cpu_first
        os.write(1, f"{os.getpid()} {self.count} {self.first:.6f} {self.last:.6f} {cpu:.6f}\n".encode())

    async def close(self) -> None:
        if self.count:
            self._flush()


@dataclass
class _Tally:
    """The latest report of each member: by pipe and member (several share a pipe with ``--processes``)."""

    counts: dict[tuple[int, int], tuple[int, float, float, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def read(self, stream: IO[bytes], slot: int) -> None:
        """Follow one pipe until it closes; each line is one member's running totals."""
        members: dict[int, int] = {}
        for raw in stream:
            parts = raw.split()
            if len(parts) != 5:
                continue
            pid, count = int(parts[0]), int(parts[1])
            key = (slot, members.setdefault(pid, len(members)))
            with self.changed:
                self.counts[key] = (count, float(parts[2]), float(parts[3]), float(parts[4]))
                self.changed.notify_all()

    def total(self) -> int:
        return sum(report[0] for report in self.counts.values())


@dataclass(frozen=True)
class GroupResult:
    """One consumption of the backlog by ``members`` members."""

    mode: Mode
    members: int
    messages: int  # counted: more than the backlog means a message was handled twice
    seconds: float  # first message to last
    spawn_seconds: float  # processes started to last message
    per_member: list[int]
    cpu_seconds: float  # the members' CPU (start-up included)
    busy_cpu_seconds: float  # the members' CPU between their first and last messages
    start_spread: float  # seconds between the first member's first message and the last member's
    log: str  # the end of what the members wrote to stderr (warnings and errors)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def member_command(endpoint: str, url: str, group: str, lease: float, *extra: str) -> list[str]:
    return [sys.executable, "-m", "s3stream", "consume", url, "--endpoint-url", endpoint, "--group", group,
            "--handler", "benchmarks.members:Progress", "--lease-duration", str(lease),
            "--log-level", "warning", *extra]


def consume_with_members(endpoint: str, url: str, backlog: int, *, mode: Mode, members: int, group: str,
                         lease: float = 6.0, time_limit: float = 300.0) -> GroupResult:
    """Consume ``backlog`` messages of ``url`` with ``members`` members (see the module docstring)."""
    if mode == "processes":
        commands = [member_command(endpoint, url, group, lease, "--processes", str(members))]
    else:
        commands = [member_command(endpoint, url, group, lease, "--member-id", f"m{i}")
                    for i in range(members)]
    tally = _Tally()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.time()
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for cmd in commands]
    readers = [threading.Thread(target=tally.read, args=(p.stdout, i), daemon=True)
               for i, p in enumerate(procs)]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + time_limit
        with tally.changed:
            while tally.total() < backlog:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    break
                tally.changed.wait(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        errors = [proc.communicate(timeout=120)[1] for proc in procs]
        for reader in readers:
            reader.join(timeout=10)
    codes = [p.returncode for p in procs]
    if tally.total() < backlog or any(codes):
        raise RuntimeError(f"{mode}: {tally.total()} of {backlog} messages, exit codes {codes}: "
                           f"{b''.join(errors)[-600:].decode(errors='replace')}")
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    reports = [r for r in tally.counts.values() if r[0]]
    firsts, lasts = [r[1] for r in reports], [r[2] for r in reports]
    return GroupResult(mode=mode, members=members, messages=tally.total(), seconds=max(lasts) - min(firsts),
                       spawn_seconds=max(lasts) - began,
                       per_member=sorted(r[0] for r in reports), busy_cpu_seconds=sum(r[3] for r in reports),
                       start_spread=max(firsts) - min(firsts),
                       log=b"".join(errors)[-2000:].decode(errors="replace"),
                       cpu_seconds=(cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime))
