"""The chaos test's moving parts: member processes, each behind its own fault proxy, and the nemesis
that carries out a seeded plan (:func:`tests.chaos.plan`) on them, recording into a
:class:`~tests.chaos.History`.

Each member is a real ``s3stream consume`` process with ``--member-id`` (a restart reuses the name,
like a pod restart) and the handler plugin :mod:`tests.chaos_handler`. Its S3 endpoint is its own
:class:`WatchedProxy`, so the nemesis can fail that member's lease writes (503 SlowDown, a dropped
connection, a delay) without touching the others, and the proxy records every lease write the server
accepted: the lease history :func:`tests.chaos.check_leases` checks calls against.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from tests.chaos import Event, History, LeaseWrite, Planned
from tests.conftest import wait_until
from tests.s3proxy import Action, Delay, Drop, Relayed, Rule, S3Error, S3Proxy

CONCURRENCY = 8  # the members' [consumer] concurrency
# The members' settle window: with four test workers on two cores, moto can take over a second from
# stamping a version to answering a listing, and a write later than the window may be skipped (the
# documented bound); 2 s keeps the run inside the bound it checks.
SETTLE = 2
SLOW = 0.01  # the share of handler calls taking 4-8 s (at most one per process every 12 s)
GRACE = 10  # shutdown_grace: a slow call ends well within it, so a SIGTERM never needs to cut one


def _lease_write(request: web.Request) -> bool:
    return request.method == "PUT" and "/_s3stream/groups/" in request.path and "/leases/" in request.path


class WatchedProxy(S3Proxy):
    """A fault proxy in front of one member that also records each lease write it forwarded and the
    server accepted, timed when the answer came back (before the member sees it). It hooks the proxy's
    forwarding, so faults (which answer instead of forwarding) and delays (which forward late) are
    seen as they happen."""

    def __init__(self, upstream: str, member: str, record: Callable[[LeaseWrite], None]) -> None:
        super().__init__(upstream)
        self.member, self.record = member, record

    async def _forward(self, request: web.Request,
                       rewrite: Callable[[web.Request, Relayed], Relayed] | None = None,
                       *, hold: float = 0.0) -> web.StreamResponse:
        if not _lease_write(request):
            return await super()._forward(request, rewrite, hold=hold)
        body = await request.read()  # aiohttp keeps it: the forward reads the same bytes

        def noted(req: web.Request, relayed: Relayed) -> Relayed:
            if relayed.status == 200:
                doc = orjson.loads(body)
                self.record(LeaseWrite(time.time(), self.member, str(doc["prefix"]), doc.get("owner"),
                                       int(doc["generation"])))
            return rewrite(req, relayed) if rewrite is not None else relayed

        return await super()._forward(request, noted, hold=hold)


class Node:
    """One member name of the group: its config, its own fault proxy, and its current process."""

    def __init__(self, tmp: Path, upstream: str, url: str, name: str, h: History) -> None:
        self.name, self.url, self.lease, self.record = name, url, h.lease, h.events.append
        self.proxy = WatchedProxy(upstream, name, h.leases.append).start()
        self.out, self.log, self.cfg = (tmp / f"{name}.jsonl", tmp / f"{name}.log", tmp / f"{name}.toml")
        self.cfg.write_text(
            f'[s3]\nendpoint_url = "{self.proxy.endpoint}"\naddressing_style = "path"\n'
            f'[consumer]\ngroup = "g"\nconcurrency = {CONCURRENCY}\npoll_interval = 0.1\n'
            "max_poll_interval = 1\n"
            f"settle_window = {SETTLE}\nshutdown_grace = {GRACE}\n[consumer.checkpoint]\ninterval = 0.2\n"
            "[consumer.leases]\nrenew_interval = 1\n"
            f'[handlers.chaos]\nuse = "tests.chaos_handler:make"\npath = "{self.out}"\nmember = "{name}"\n'
            f"slow = {SLOW}\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.busy = False

    def start(self) -> None:
        """Start a process under this member id (a pod restart: same name, new pid)."""
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "S3STREAM_LOG_LEVEL": "info",
               "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "s3stream", "consume", self.url, "--handler", "chaos",
                 "--config", str(self.cfg), "--lease-duration", str(self.lease), "--member-id", self.name],
                stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=root)
        now = time.time()
        self.record(Event("start", self.name, now, now, pid=self.proc.pid))

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    async def exited(self, within: float) -> int | None:
        """Wait up to ``within`` seconds for the process to end; its exit code, or None if it runs on."""
        if self.proc is None:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            return await asyncio.to_thread(self.proc.wait, within)
        return None

    async def terminate(self) -> None:
        """SIGTERM, recorded with the exit code; after 30 s, SIGKILL, recorded as no exit code."""
        pid, began = self.pid, time.time()
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        code = await self.exited(30)
        ended = time.time()
        if code is None:
            self.signal(signal.SIGKILL)
            await self.exited(10)
        self.record(Event("term", self.name, began, ended, pid=pid, code=code))

    def close(self) -> None:
        """SIGKILL whatever still runs and stop the proxy (the end of a test, whatever happened)."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)
        self.proxy.stop()


FAULTS: dict[str, Callable[[Planned], Action]] = {
    "503": lambda _: S3Error(503, "SlowDown"),
    "delay": lambda step: Delay(step.delay),
    "drop": lambda _: Drop(),
}


class Nemesis:
    """Carries out a plan on the nodes, recording each step's window in the history."""

    def __init__(self, nodes: list[Node], record: Callable[[Event], None],
                 ready: Callable[[Node], Awaitable[bool]]) -> None:
        self.nodes, self.record, self.ready = nodes, record, ready

    async def run(self, steps: list[Planned]) -> None:
        began = time.monotonic()
        tasks = []
        for step in steps:
            await asyncio.sleep(max(0.0, began + step.at - time.monotonic()))
            await self.reap()
            node = self.nodes[step.target]
            if node.busy or sum(n.busy for n in self.nodes) >= len(self.nodes) - 1:
                now = time.time()  # a restart or drain ran longer than planned
                self.record(Event("skip", node.name, now, now, detail=step.kind))
                continue
            node.busy = True
            tasks.append(asyncio.create_task(self._do(step, node)))
        await asyncio.gather(*tasks)

    async def reap(self) -> None:
        """A member that ended without being asked to: record it and start it again."""
        for node in self.nodes:
            if not node.busy and node.proc is not None and not node.running():
                now = time.time()
                self.record(Event("exit", node.name, now, now, pid=node.pid, code=node.proc.returncode))
                await self.restart(node)

    async def heal(self) -> None:
        """No faults, nobody paused, everybody running."""
        for node in self.nodes:
            node.proxy.clear()
            node.signal(signal.SIGCONT)
        await self.reap()

    async def restart(self, node: Node) -> None:
        """Start the member again and wait (a minute at most) until its new process has registered, so
        no step signals a process still starting up (before it handles SIGTERM)."""
        node.start()
        with contextlib.suppress(pytest.fail.Exception):  # one that never does: the end of the run says so
            await wait_until(lambda: self.ready(node), within=60, what=f"{node.name} registered")

    async def _do(self, step: Planned, node: Node) -> None:
        try:
            if step.kind == "fault":
                rule = node.proxy.add(Rule(FAULTS[step.fault](step), when=_lease_write))
                began = time.time()
                await asyncio.sleep(step.length)
                node.proxy.clear()
                self.record(Event("fault", node.name, began, time.time(), pid=node.pid,
                                  detail=f"{step.fault} x{rule.applied}"))
            elif step.kind == "pause":
                began = time.time()
                node.signal(signal.SIGSTOP)
                await asyncio.sleep(step.length)
                node.signal(signal.SIGCONT)
                self.record(Event("pause", node.name, began, time.time(), pid=node.pid))
            elif step.kind == "kill":
                pid, began = node.pid, time.time()
                node.signal(signal.SIGKILL)
                await node.exited(10)
                self.record(Event("kill", node.name, began, began, pid=pid))
                await asyncio.sleep(step.length)
                await self.restart(node)
            else:
                await node.terminate()
                await asyncio.sleep(step.length)
                await self.restart(node)
        finally:
            node.busy = False
