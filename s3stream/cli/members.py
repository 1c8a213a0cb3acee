"""``--processes N`` of ``s3stream consume`` and ``run``: N members of one consumer group on this host.

One Python process runs one event loop on one core. To use N cores, the command starts N copies of
itself as child processes, each an ordinary member of the group (leases on, a member id of its own:
``<id>-0`` … ``<id>-N-1``, the id being ``--member-id`` or ``<host>-<pid>``), and supervises them: SIGTERM
and SIGINT are passed on to every child, which drains and commits as a single consumer does (a second
SIGINT ends them at once); a child that fails makes the others stop; the command exits with the worst
exit code of its children. Each child serves ``/metrics`` on the port given plus its number, and on a
terminal its status line names it (``status <id>-0: …``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

from s3stream.cli.runopts import MEMBER_STATUS_ENV
from s3stream.config import Settings
from s3stream.errors import ConfigError

_PR_SET_PDEATHSIG = 1
_REPLACED = ("--processes", "--member-id", "--metrics-port")  # each child gets its own


def processes_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--processes", type=int, metavar="N",
        help="Run N members of the consumer group in N processes on this host, one per core (turns "
             "leases on; each child gets its own member id, and metrics port + its number).")(func)


def check(processes: int, settings: Settings) -> None:
    """What ``--processes`` needs: at least one process, checkpoints in S3 (the leases' fence)."""
    if processes < 1:
        raise ConfigError(f"--processes must be at least 1, not {processes}")
    if settings.consumer.checkpoint.store != "s3":
        raise ConfigError("--processes runs members of a consumer group, which keep their checkpoints in "
                          "S3: drop --checkpoint-dir ([consumer.checkpoint] store = \"file\")")


def base_member_id(settings: Settings) -> str:
    """The children's ids are this plus ``-<number>``."""
    if settings.consumer.leases.member_id:
        return settings.consumer.leases.member_id
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def strip_options(args: list[str], names: tuple[str, ...] = _REPLACED) -> list[str]:
    """``args`` without the options ``names`` (``--name VALUE`` or ``--name=VALUE``)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in names)):
            out.append(arg)
    return out


def child_commands(processes: int, settings: Settings, args: list[str]) -> list[list[str]]:
    """The command line of each child: this one (``args``, without the options each child gets its
    own), with a member id, leases on and its metrics port."""
    base, leases = base_member_id(settings), settings.consumer.leases
    common = [sys.executable, "-m", "s3stream", *strip_options(args)]
    if not leases.enabled:
        common += ["--lease-duration", str(leases.duration)]
    commands = []
    for number in range(processes):
        command = [*common, "--member-id", f"{base}-{number}"]
        if settings.metrics.port is not None:
            command += ["--metrics-port", str(settings.metrics.port + number if settings.metrics.port else 0)]
        commands.append(command)
    return commands


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM (drain and stop) if the supervisor dies."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code  # killed by a signal: 128 + its number, as a shell says


@contextlib.contextmanager
def _forwarding(children: dict[int, subprocess.Popen[bytes]],
                received: list[int]) -> Iterator[Callable[[int], None]]:
    """While the block runs, SIGTERM and SIGINT go to every running child (and are noted in
    ``received``, for a child started after them); yields ``send(sig)``."""

    def send(sig: int) -> None:
        received.append(sig)
        for child in children.values():
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(sig)

    previous = {sig: signal.signal(sig, lambda number, _: send(number))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield send
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def supervise(commands: list[list[str]]) -> int:
    """Run the children until every one has exited; the worst exit code. A child that fails (a code
    other than 0) makes the others stop (SIGTERM) and drain."""
    children: dict[int, subprocess.Popen[bytes]] = {}
    received: list[int] = []
    worst, stopping = 0, False
    with _forwarding(children, received) as send:
        for command in commands:
            # its own process group: a terminal's Ctrl-C reaches the supervisor, which passes it on once
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, process_group=0,
                                     env={**os.environ, MEMBER_STATUS_ENV: "1"},  # "status <id>: …"
                                     preexec_fn=_die_with_parent)  # only prctl between fork and exec
            children[child.pid] = child
            if received:  # stopped while the children were being started
                child.send_signal(signal.SIGTERM)
        while children:
            pid, status = os.wait()
            if pid not in children:
                continue
            child = children.pop(pid)
            child.returncode = code = _exit_code(status)
            worst = max(worst, code)
            if code != 0 and not stopping and not received:
                stopping = True
                send(signal.SIGTERM)
    return worst
