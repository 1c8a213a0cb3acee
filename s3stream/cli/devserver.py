"""An embedded S3 endpoint (moto's server) on 127.0.0.1, for local use, the demo and tests."""

from __future__ import annotations

import logging
from typing import Any

from s3stream.errors import ConfigError


def start_moto(port: int = 0, *, quiet: bool = True) -> tuple[Any, str]:
    """Start moto's S3 server in a thread; returns ``(server, endpoint_url)``. Stop with ``.stop()``."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise ConfigError(
            "the embedded S3 server needs moto: pip install 's3stream[local]'"
        ) from None
    if quiet:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=not quiet)
    server.start()
    host, bound = server.get_host_and_port()
    return server, f"http://{host}:{bound}"
