"""The command line's errors, as a subprocess: ``--log-level`` anywhere and validated, ``--version``,
distinct exit codes (3: the endpoint cannot be reached; 2: setup; 1: run time), local resources checked
at start (a port in use, a checkpoint folder that is a file), and a plain function named as a handler.
Every failure is exactly one ``s3stream: error:`` line on stderr, never a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version as package_version
from pathlib import Path

import pytest

from s3stream.errors import HandlerError
from s3stream.pipeline.handlers import build_handler, jsonl_handler, stdout_handler, takes_a_message
from s3stream.s3.store import Store
from tests import errors_plugins, handler_plugins
from tests.conftest import cli_command, new_bucket_name
from tests.test_cli import assert_one_line_error, child_env, free_port, write_config

TIMEOUT = 30.0
SHORT_RETRIES = "[s3]\nmax_attempts = 2\nmax_retry_time = 2\n"


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``s3stream ARGS`` to completion, output captured as text."""
    return subprocess.run(cli_command(*args), env={**child_env(), **(env or {})}, cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)


def unreachable(tmp: Path) -> list[str]:
    """Options pointing a command at an endpoint nothing listens on, with a short retry budget."""
    return ["--endpoint-url", f"http://127.0.0.1:{free_port()}",
            "--config", write_config(tmp / "short.toml", SHORT_RETRIES)]


def valid_config(tmp: Path) -> str:
    return write_config(tmp / "ok.toml", '[[sources]]\nurl = "s3://b/t/"\nhandler = "stdout"\n')


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something listens on for the test's duration."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def debug_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("{") and
            json.loads(line).get("level") == "debug"]


# --- --log-level and --version -----------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_log_level_is_accepted_before_or_after_the_subcommand(where: str, tmp_path: Path) -> None:
    """``--log-level DEBUG`` (any case) applies whether it comes before ``consume`` or after its
    arguments: debug lines appear, then the one error line (exit 3, the endpoint is unreachable)."""
    level = ["--log-level", "DEBUG"]
    args = ["consume", "s3://b/t/", *unreachable(tmp_path)]
    result = run(*(level + args if where == "before" else args + level), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert debug_lines(result.stderr), result.stderr
    assert result.stderr.splitlines()[-1].startswith("s3stream: error:")
    assert "Traceback" not in result.stderr


def test_without_log_level_no_debug_lines(tmp_path: Path) -> None:
    """The same run without ``--log-level`` logs at info: nothing but the error line."""
    result = run("consume", "s3://b/t/", *unreachable(tmp_path), cwd=tmp_path)
    assert not debug_lines(result.stderr)
    line = assert_one_line_error(result, "cannot reach", code=3)
    assert "HeadBucket" in line


@pytest.mark.parametrize("args", [
    ["--log-level", "loud", "config", "check", "CONFIG"],
    ["config", "check", "CONFIG", "--log-level", "loud"],
    ["config", "--log-level", "loud", "check", "CONFIG"],
])
def test_bad_log_level_is_one_line_naming_the_option(args: list[str], tmp_path: Path) -> None:
    """An unknown level, wherever it is given, is one line naming ``--log-level``, the value and the
    levels, exit 2 (not click's usage text)."""
    config = valid_config(tmp_path)
    result = run(*[config if a == "CONFIG" else a for a in args], cwd=tmp_path)
    assert_one_line_error(result, "--log-level", "'loud'", "debug, info, warning, error")


def test_bad_log_level_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    """``S3STREAM_LOG_LEVEL=loud`` is validated too: one line naming the variable, exit 2."""
    result = run("config", "check", valid_config(tmp_path), cwd=tmp_path, env={"S3STREAM_LOG_LEVEL": "loud"})
    assert_one_line_error(result, "S3STREAM_LOG_LEVEL", "'loud'")


def test_log_level_in_any_case_is_accepted(tmp_path: Path) -> None:
    """``--log-level WARNING`` after the subcommand and ``S3STREAM_LOG_LEVEL=Error`` are valid."""
    config = valid_config(tmp_path)
    assert run("config", "check", config, "--log-level", "WARNING", cwd=tmp_path).returncode == 0
    assert run("config", "check", config, cwd=tmp_path, env={"S3STREAM_LOG_LEVEL": "Error"}).returncode == 0


def test_version_comes_from_the_package_metadata(tmp_path: Path) -> None:
    """``s3stream --version`` prints ``s3stream VERSION`` (the installed distribution's) and exits 0."""
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"s3stream {package_version('s3stream')}"


def test_help_lists_the_exit_codes(tmp_path: Path) -> None:
    """``s3stream --help`` ends with the exit codes 0, 1, 2, 3 and what each means."""
    out = run("--help", cwd=tmp_path).stdout
    codes = out[out.index("Exit codes:"):]
    for code, meaning in (("0", "done"), ("1", "could not go on"), ("2", "setup error"),
                          ("3", "cannot be reached")):
        assert any(line.split()[:1] == [code] and meaning in line for line in codes.splitlines()), codes


# --- exit codes --------------------------------------------------------------------------------------


def test_unknown_host_exits_3(tmp_path: Path) -> None:
    """An endpoint whose host name does not resolve is "cannot reach", exit 3, one line."""
    config = write_config(tmp_path / "short.toml", SHORT_RETRIES)
    result = run("consume", "s3://b/t/", "--endpoint-url", "http://no-such-host.invalid:9000",
                 "--config", config, cwd=tmp_path)
    assert_one_line_error(result, "cannot reach", "no-such-host.invalid", code=3)


def test_publish_to_an_unreachable_endpoint_exits_3(tmp_path: Path) -> None:
    """Not only ``consume``: any command whose store cannot be reached exits 3."""
    result = run("publish", "s3://b/t", "--body", "x", *unreachable(tmp_path), cwd=tmp_path)
    assert_one_line_error(result, "cannot reach", code=3)


async def test_a_failure_at_run_time_exits_1(store: Store, moto_endpoint: str, tmp_path: Path) -> None:
    """A handler that keeps failing with dead letters off stops the run: the last stderr line is the
    error naming the handler and the message, exit 1, no traceback text."""
    bucket = new_bucket_name("runtime")
    await store.create_bucket(bucket, versioning=True)
    await store.put_object(bucket, "t/k1", b"x")
    config = write_config(tmp_path / "c.toml", "[s3]\naddressing_style = \"path\"\n[consumer]\n"
                          "dead_letters = false\nhandler_attempts = 1\npoll_interval = 0.1\n")
    result = run("consume", f"s3://{bucket}/t/", "--handler", "tests.errors_plugins:reject_customer",
                 "--endpoint-url", moto_endpoint, "--config", config, "--log-level", "error", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("s3stream: error: handler"), result.stderr
    assert "t/k1" in last
    assert "no such customer" in last


# --- local resources checked at start ----------------------------------------------------------------


def test_metrics_port_in_use_is_refused_at_start(busy_port: int, tmp_path: Path) -> None:
    """``consume --metrics-port P`` with P taken: one line naming the option and the port, exit 2,
    before the store is contacted (it is unreachable here, which would exit 3)."""
    result = run("consume", "s3://b/t/", "--metrics-port", str(busy_port), *unreachable(tmp_path),
                 cwd=tmp_path)
    assert_one_line_error(result, "--metrics-port", f"127.0.0.1:{busy_port}", "already in use")


def test_metrics_port_of_a_config_file_in_use_is_refused(busy_port: int, tmp_path: Path) -> None:
    """``run --config`` whose ``[metrics] port`` is taken: the same one line, exit 2."""
    config = write_config(tmp_path / "run.toml", f"{SHORT_RETRIES}[metrics]\nport = {busy_port}\n"
                          "[[sources]]\nurl = \"s3://b/t/\"\nhandler = \"stdout\"\n")
    result = run("run", "--config", config, cwd=tmp_path)
    assert_one_line_error(result, "[metrics] port", str(busy_port), "already in use")


@pytest.mark.parametrize("under", ["", "sub"])
def test_checkpoint_dir_that_is_a_file_is_refused(under: str, tmp_path: Path) -> None:
    """``--checkpoint-dir FILE`` (or a folder under a file) is one line naming the option and the
    path, exit 2, before the store is contacted."""
    file = tmp_path / "not-a-folder"
    file.write_text("x")
    path = str(file / under) if under else str(file)
    result = run("consume", "s3://b/t/", "--checkpoint-dir", path, *unreachable(tmp_path), cwd=tmp_path)
    assert_one_line_error(result, "--checkpoint-dir", path, "is a file" if not under else "a file")


def test_checkpoint_dir_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    """A ``--checkpoint-dir`` where no file can be created is one line naming the option, exit 2. (The
    tests may run as root, whom permissions do not stop: a folder in sysfs stands in.)"""
    result = run("consume", "s3://b/t/", "--checkpoint-dir", "/sys/s3stream-checkpoints",
                 *unreachable(tmp_path), cwd=tmp_path)
    assert_one_line_error(result, "--checkpoint-dir", "/sys/s3stream-checkpoints", "cannot be created")


def test_tail_keeps_a_log_level_given_after_the_subcommand(tmp_path: Path) -> None:
    """``tail`` logs warnings only by default, but ``--log-level debug`` after it is kept."""
    quiet = run("tail", "s3://b/t/", *unreachable(tmp_path), cwd=tmp_path)
    loud = run("tail", "s3://b/t/", *unreachable(tmp_path), "--log-level", "debug", cwd=tmp_path)
    assert not debug_lines(quiet.stderr), quiet.stderr
    assert debug_lines(loud.stderr), loud.stderr
    assert loud.returncode == 3, loud.stderr


def test_dev_server_port_in_use_is_refused(busy_port: int, tmp_path: Path) -> None:
    """``dev-server --port P`` with P taken exits 2 at once with one line (it used to hang)."""
    result = run("dev-server", "--port", str(busy_port), cwd=tmp_path)
    assert_one_line_error(result, "dev-server --port", str(busy_port), "already in use")
    assert result.stdout == ""


# --- a plain function where a handler is expected ----------------------------------------------------


@pytest.mark.parametrize("attr", ["plain_handler", "annotated_handler"])
def test_plain_function_handler_is_refused_without_being_called(attr: str, tmp_path: Path) -> None:
    """``--handler mod:fn`` naming ``def fn(message)`` is refused with one line saying what s3stream
    expects, exit 2, before the store is contacted; the function is never called (it would print)."""
    spec = f"tests.errors_plugins:{attr}"
    result = run("consume", "s3://b/t/", "--handler", spec, *unreachable(tmp_path), cwd=tmp_path)
    assert_one_line_error(result, repr(spec), "is a plain function", "factory", "async")
    assert result.stdout == ""


def test_valid_factories_are_never_taken_for_plain_handlers() -> None:
    """The rule refuses only plain functions of one parameter annotated ``Message`` or named
    ``message``/``msg`` without another annotation: factories (functions, classes, the built-ins, one
    naming its dict ``message``) all pass; async handlers are not factories at all."""
    for target in (errors_plugins.make_sink, errors_plugins.make_unannotated, handler_plugins.make_collector,
                   handler_plugins.Collector, stdout_handler, jsonl_handler, handler_plugins.record,
                   errors_plugins.returns_nothing):
        assert not takes_a_message(target), target
    assert takes_a_message(errors_plugins.plain_handler)
    assert takes_a_message(errors_plugins.annotated_handler)
    assert build_handler("tests.errors_plugins:make_sink").name == "tests.errors_plugins:make_sink"


def test_plain_function_returning_none_says_so() -> None:
    """A plain function whose parameter gives nothing away is called as a factory; returning None, it
    is refused with a line saying so and what is expected."""
    with pytest.raises(HandlerError, match=r"plain function that returned None.*async callable"):
        build_handler("tests.errors_plugins:returns_nothing")


def test_cli_modules_are_the_only_ones_to_echo() -> None:
    """Library modules (what ``s3stream.Consumer`` imports) neither print nor configure logging: the
    consumer's import graph holds no click, and a fresh interpreter importing it leaves logging and
    structlog unconfigured."""
    code = ("import logging, sys, structlog, s3stream\n"
            "assert 'click' not in sys.modules, 'click imported by the library'\n"
            "assert not structlog.is_configured()\n"
            "assert logging.getLogger().handlers == []\n")
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ}, capture_output=True,
                            text=True, timeout=TIMEOUT, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
