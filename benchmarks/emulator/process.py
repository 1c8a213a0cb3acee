"""The S3 emulator in a subprocess, from Python: ``with run_emulator("express") as emu:`` runs
``python -m benchmarks.emulator`` on a free port of 127.0.0.1, and :class:`EmulatorProcess` makes the
control calls (stats, reset, seed) synchronously."""

from __future__ import annotations

import base64
import contextlib
import os
import pathlib
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

import orjson

from benchmarks.emulator.calls import CONTROL
from benchmarks.emulator.server import PROFILES


class EmulatorError(RuntimeError):
    """The emulator subprocess did not start, or a control call failed."""


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: never a proxy


class EmulatorProcess:
    """A running emulator subprocess: ``url``, ``process``, and the control calls (synchronous)."""

    def __init__(self, url: str, process: subprocess.Popen[bytes]) -> None:
        self.url = url
        self.process = process

    def stats(self) -> dict[str, Any]:
        """``GET /_emulator/stats``."""
        return dict(self._control("GET", "stats"))

    def reset_stats(self, *, data: bool = False) -> None:
        """Zero the counters; with ``data=True`` also drop every bucket."""
        self._control("POST", "reset?data=1" if data else "reset", {})

    def seed(self, bucket: str, objects: Iterable[Mapping[str, Any]], *, versioned: bool = False) -> int:
        """Store objects directly: dicts with ``key`` and ``body`` (str or bytes) or ``body_b64``, and
        optionally ``content_type``, ``content_encoding``, ``metadata``. Returns how many were stored."""
        docs = []
        for obj in objects:
            doc = dict(obj)
            if isinstance(doc.get("body"), bytes | bytearray):
                doc["body_b64"] = base64.b64encode(doc.pop("body")).decode()
            docs.append(doc)
        answer = self._control("POST", "seed", {"bucket": bucket, "versioned": versioned, "objects": docs})
        return int(answer["stored"])

    def _control(self, method: str, action: str, payload: Any = None) -> Any:
        data = orjson.dumps(payload) if payload is not None else None
        request = urllib.request.Request(f"{self.url}{CONTROL}{action}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with _OPENER.open(request, timeout=120) as answer:
                return orjson.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise EmulatorError(f"{method} {CONTROL}{action}: {exc.code} {exc.read()[:500]!r}") from None
        except OSError as exc:
            raise EmulatorError(f"{method} {CONTROL}{action}: {exc}") from None


def _child_env() -> dict[str, str]:
    """Our environment with the checkout's root first on PYTHONPATH, so ``-m benchmarks.emulator`` imports
    from any working directory."""
    root = str(pathlib.Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


@contextlib.contextmanager
def run_emulator(profile: str = "zero", verify_signatures: bool = False, put_rate: float | None = None,
                 get_rate: float | None = None, latency_ms: float | None = None, *,
                 ready_timeout: float = 15.0) -> Iterator[EmulatorProcess]:
    """Run ``python -m benchmarks.emulator`` on a free port of 127.0.0.1 for the ``with`` block; stop it
    with SIGTERM (then SIGKILL after 10 s) on exit. Its stderr is copied to ours when it stops."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    argv = [sys.executable, "-m", "benchmarks.emulator", "--host", "127.0.0.1", "--port", "0",
            "--profile", profile]
    if verify_signatures:
        argv.append("--verify-signatures")
    for flag, value in (("--put-rate", put_rate), ("--get-rate", get_rate), ("--latency-ms", latency_ms)):
        if value is not None:
            argv += [flag, str(value)]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL,
                                   env=_child_env())
        try:
            url = _await_ready(process, errors, ready_timeout)
            yield EmulatorProcess(url, process)
        finally:
            _stop(process)
            errors.seek(0)
            if output := errors.read():
                sys.stderr.write(output.decode(errors="replace"))


def _await_ready(process: subprocess.Popen[bytes], errors: IO[bytes], timeout: float) -> str:
    """The URL from the ``READY`` line, read with a deadline."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            chunk = os.read(process.stdout.fileno(), 4096) if left > 0 and selector.select(left) else None
            if not chunk:
                why = f"not ready within {timeout:g} s"
                if chunk == b"":  # stdout closed: the process is exiting
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=5)
                    why = f"exited with {process.poll()}"
                errors.seek(0)
                tail = errors.read()[-2000:].decode(errors="replace")
                raise EmulatorError(f"benchmarks.emulator {why}; stderr: {tail or '(empty)'}")
            buffer += chunk
    line = buffer.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line.startswith("READY http://"):
        raise EmulatorError(f"benchmarks.emulator printed {line!r} instead of READY <url>")
    return line.removeprefix("READY ")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()

