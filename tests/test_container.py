"""The container image's recipe: an exact base image, every dependency pinned by constraints.txt
within pyproject.toml's ranges, no environment variable overriding the mounted config, and a
HEALTHCHECK that asks the health endpoint of whichever command the container runs — checked against
a real ``s3stream run`` process, found through its /proc command line as in the container.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib.util
import re
import socket
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from s3stream.s3.store import Store
from tests.conftest import cli_command, new_bucket_name, wait_until

ROOT = Path(__file__).resolve().parent.parent


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    lines = (line.strip() for line in text.splitlines())
    return [(w.upper(), rest.strip()) for w, _, rest in (line.partition(" ") for line in lines
                                                          if line and not line.startswith("#"))]


def healthcheck() -> ModuleType:
    """deploy/docker/healthcheck.py, the script the image's HEALTHCHECK runs."""
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy/docker/healthcheck.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_the_base_image_is_an_exact_python_and_debian_release() -> None:
    """``FROM python:3.11.<patch>-slim-bookworm`` (optionally ``@sha256:…``): no floating tag; the
    Dockerfile says how to pin the digest."""
    bases = [rest for word, rest in dockerfile() if word == "FROM"]
    assert len(bases) == 1
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", bases[0])
    assert "imagetools inspect" in (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_no_image_variable_overrides_the_config_and_the_install_is_constrained() -> None:
    """The image sets no ``S3STREAM_…`` variable (they would override the mounted config's settings,
    its metrics port among them) and installs with ``-c constraints.txt``."""
    env = " ".join(rest for word, rest in dockerfile() if word == "ENV")
    assert "S3STREAM_" not in env
    runs = [rest for word, rest in dockerfile() if word == "RUN" and "pip install" in rest]
    assert runs
    assert all("-c constraints.txt" in run for run in runs)


def test_everything_the_dockerfile_copies_is_in_the_build_context() -> None:
    """No COPY source is left out of the build context by .dockerignore (a file it excludes would
    fail the build), and each exists."""
    ignored = [line.strip().rstrip("/") for line in
               (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")]
    sources = [src for word, rest in dockerfile() if word == "COPY" for src in rest.split()[:-1]]
    assert "constraints.txt" in sources
    for src in sources:
        assert (ROOT / src).exists(), src
        parts = Path(src).parts
        for pattern in ignored:
            bare = pattern.removeprefix("**/")
            assert not any(fnmatch.fnmatch(p, bare) for p in parts), f"{src} is excluded by {pattern}"
            assert not fnmatch.fnmatch(src, pattern), f"{src} is excluded by {pattern}"


def test_constraints_pin_every_runtime_dependency_within_pyprojects_ranges() -> None:
    """Every package ``pip install .`` brings on Linux and Python 3.11 (pyproject's dependencies and
    theirs, through the installed packages' metadata) is pinned in constraints.txt, and each of
    pyproject's own requirements admits its pin."""
    pins = constraints()
    env = {**default_environment(), "sys_platform": "linux", "python_version": "3.11",
           "python_full_version": "3.11.14", "extra": ""}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if (req.marker and not req.marker.evaluate(env)) or name in seen:
            continue
        seen.add(name)
        assert name in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req} does not admit {pins[name]}"
        todo += [Requirement(r) for r in metadata.requires(req.name) or []]
    assert seen == set(pins), f"pinned but not needed: {sorted(set(pins) - seen)}"


@pytest.mark.parametrize(("args", "url"), [
    (["run", "--config", "config/container.toml"], "http://127.0.0.1:9464/healthz"),
    (["--log-level", "debug", "run", "--config", "config/container.toml", "--metrics-port", "9100"],
     "http://127.0.0.1:9100/healthz"),
    (["consume", "s3://b/p/", "--metrics-port", "9200"], "http://127.0.0.1:9200/healthz"),
    (["consume", "s3://b/p/"], None),
    (["snapshot", "serve", "s3://b/k", "--port", "8081", "--host", "0.0.0.0"], "http://127.0.0.1:8081/healthz"),
    (["snapshot", "serve", "--config", "config/kv-service.toml"], "http://127.0.0.1:8080/healthz"),
    (["publish", "s3://b/p", "--body", "x"], None),
    ([], None),
])
def test_the_health_check_asks_the_port_of_the_command_being_run(
        args: list[str], url: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run`` and ``consume``: ``[metrics] port`` (the config's, or the flag's); ``snapshot serve``:
    its own port; metrics off or any other command: nothing to ask."""
    monkeypatch.chdir(ROOT)
    assert healthcheck().health_url(args) == url


def test_the_images_own_command_is_checked_on_the_exposed_port() -> None:
    """The image's CMD with the config it ships at /etc/s3stream/config.toml is checked on the port
    the image EXPOSEs."""
    instructions = dockerfile()
    cmd = re.findall(r'"([^"]*)"', next(rest for word, rest in instructions if word == "CMD"))
    copies = dict(reversed(rest.split()) for word, rest in instructions
                  if word == "COPY" and len(rest.split()) == 2)
    args = [str(ROOT / copies[a]) if a in copies else a for a in cmd]
    port = next(rest for word, rest in instructions if word == "EXPOSE")
    assert healthcheck().health_url(args) == f"http://127.0.0.1:{port}/healthz"


@pytest.fixture
def answering() -> Iterator[dict[str, int]]:
    """A local HTTP server whose /healthz answers the status in the dict (200 to begin with)."""
    status = {"code": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status["code"])
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    status["port"] = server.server_port
    yield status
    server.shutdown()
    server.server_close()


def test_the_health_check_fails_on_an_error_status_or_nobody_listening(answering: dict[str, int]) -> None:
    """Exit 0 for a 200, 1 for a 503 and 1 for a port nobody listens on; 0 with nothing to ask."""
    check = healthcheck().check
    url = f"http://127.0.0.1:{answering['port']}/healthz"
    assert check(url) == 0
    answering["code"] = 503
    assert check(url) == 1
    assert check("http://127.0.0.1:1/healthz") == 1
    assert check(None) == 0


async def test_the_health_check_finds_a_running_consumer_by_its_command_line(
        store: Store, moto_url: str, tmp_path: Path) -> None:
    """A real ``s3stream run --config FILE`` process: the check reads its /proc command line, builds
    its settings from FILE and answers 0 once /healthz does; after the process stops, 1."""
    bucket = new_bucket_name("health")
    await store.create_bucket(bucket, versioning=True)
    with socket.socket() as sock:  # a free port for the process's metrics
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    text = (ROOT / "config/container.toml").read_text(encoding="utf-8")
    text = text.replace("port = 9464", f"port = {port}").replace("s3://my-bucket/events/", f"s3://{bucket}/in/")
    config = tmp_path / "config.toml"
    config.write_text(f'[s3]\nendpoint_url = "{moto_url}"\naddressing_style = "path"\n\n' + text,
                      encoding="utf-8")
    module = healthcheck()
    proc = await asyncio.create_subprocess_exec(*cli_command("run", "--config", str(config)),
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_until(lambda: module.command_line(proc.pid), what="the process's command line")
        url = module.health_url(module.command_line(proc.pid))
        assert url == f"http://127.0.0.1:{port}/healthz"
        await wait_until(lambda: asyncio.to_thread(lambda: module.check(url) == 0), within=30,
                         what="its /healthz answering 200")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 60)
    assert module.check(url) == 1
