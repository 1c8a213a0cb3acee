"""The container image's HEALTHCHECK: asks the health endpoint of the command the container runs.

It reads the command from PID 1's command line (``s3stream run --config FILE``, ``s3stream consume
URL …``, ``s3stream snapshot serve …``), builds that command's settings the way the command does
(the config file, ``S3STREAM_…`` variables, the command's flags) and asks ``/healthz`` on the port
they give: ``[metrics] port`` for ``run`` and ``consume``, ``[snapshot] port`` for ``snapshot
serve``. Any other command serves no endpoint and is reported healthy while it runs; so is ``run`` or
``consume`` with metrics off (no ``[metrics] port``), with a line saying so.

Exit 0: healthy; 1: unhealthy (Docker's HEALTHCHECK convention).
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

import click

TIMEOUT = 4.0


def command_line(pid: int = 1) -> list[str]:
    """The arguments after ``s3stream`` on ``pid``'s command line (the script or ``-m s3stream``)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    for i, arg in enumerate(argv):
        if os.path.basename(arg) == "s3stream":
            return [a for a in argv[i + 1:] if a]
    return []


def health_url(args: list[str]) -> str | None:
    """The ``/healthz`` URL of the command ``s3stream ARGS`` serves, or None if it serves none."""
    from s3stream.cli import main
    from s3stream.cli.common import command_settings
    from s3stream.cli.consume import consume_settings
    from s3stream.config import build_settings, read_toml

    args = list(args)
    while args and args[0].startswith("-"):  # the group's own options: --log-level LEVEL
        if args.pop(0) == "--log-level" and args:
            args.pop(0)
    if not args:
        return None
    ctx = click.Context(main)
    name, rest = args[0], args[1:]
    command = main.get_command(ctx, name)
    if name == "snapshot" and rest[:1] == ["serve"] and isinstance(command, click.Group):
        name, rest, command = "snapshot serve", rest[1:], command.get_command(ctx, "serve")
    if command is None or name not in {"run", "consume", "snapshot serve"}:
        return None
    params: dict[str, Any] = command.make_context(name, rest, resilient_parsing=True).params
    if name == "run":
        cli = {"metrics": {"port": params["metrics_port"]}} if params.get("metrics_port") else {}
        metrics = build_settings(read_toml(params["config"]), cli=cli).metrics
        return _url(metrics.host, metrics.port)
    if name == "consume":
        metrics = consume_settings(params.pop("url"), **params).metrics
        return _url(metrics.host, metrics.port)
    if name == "snapshot serve":
        chosen = {k: params[k] for k in ("port", "host") if params.get(k) is not None}
        snapshot = command_settings(params.get("config"), None, sections=("s3", "snapshot"),
                                    snapshot=chosen).snapshot
        return _url(snapshot.host, snapshot.port)
    return None


def _url(host: str, port: int | None) -> str | None:
    if not port:
        return None
    if host in {"0.0.0.0", "::", ""}:
        host = "127.0.0.1"
    return f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"


def check(url: str | None) -> int:
    """0 when ``url`` answers 2xx within the timeout (or there is nothing to ask), else 1."""
    if url is None:
        print("healthy: this command serves no health endpoint")
        return 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            print(f"healthy: {url} answered {resp.status}")
            return 0
    except Exception as exc:  # an HTTP error status, a refused connection, a timeout
        print(f"unhealthy: {url}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(check(health_url(command_line())))
