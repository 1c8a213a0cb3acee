"""Checks made when a command starts, before any work: the local resources it will need exist and are
usable. Each failure is a :class:`~s3stream.errors.ConfigError` whose one line names the option (or
setting) and the resource, instead of a traceback (or a hang) once the run is under way."""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from pathlib import Path

from s3stream.config import Settings
from s3stream.errors import ConfigError


def check_port(host: str, port: int, what: str) -> None:
    """Something can listen on ``host:port`` (TCP), as a server there will (port 0: any free port)."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is fine
            sock.bind(address)
    except OSError as exc:
        reason = "the port is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise ConfigError(f"{what}: cannot listen on {host}:{port}: {reason}") from None


def check_folder(directory: str, what: str) -> None:
    """``directory`` is a folder (created if missing) in which files can be written."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=path, prefix=".s3stream-probe-")
        os.close(handle)
        os.unlink(probe)
    except FileExistsError:
        raise ConfigError(f"{what} {directory!r} is a file, not a folder") from None
    except NotADirectoryError:
        raise ConfigError(f"{what} {directory!r}: part of the path is a file, not a folder") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{what} {directory!r} cannot be created or written: {reason}") from None


def check_consumer(settings: Settings) -> None:
    """What a consumer needs locally: its metrics port free, its checkpoint folder writable."""
    metrics = settings.metrics
    if metrics.port is not None:
        check_port(metrics.host, metrics.port, "metrics port (--metrics-port, [metrics] port)")
    checkpoint = settings.consumer.checkpoint
    if checkpoint.store == "file":
        check_folder(checkpoint.directory,
                     "checkpoint folder (--checkpoint-dir, [consumer.checkpoint] directory)")
