"""What the ``s3stream`` group itself offers: ``--log-level`` anywhere on the command line (validated,
any case, also from ``S3STREAM_LOG_LEVEL``), ``--version``, and the exit codes."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import IO, Any

import click
from click.core import ParameterSource

from s3stream.service import logs

EXIT_CODES = """\b
Exit codes:
  0    done, or stopped by SIGTERM/SIGINT (or its output went away)
  1    the stream could not go on (a handler kept failing with dead letters off,
       a checkpoint changed by another consumer, another failure at run time)
  2    usage or setup error: an option, setting or handler, the bucket or topic,
       credentials or permissions, a port in use, an unusable checkpoint folder
  3    the S3 (or SQS) endpoint cannot be reached: connection refused, unknown
       host, or timed out, after the retries
  130  interrupted (a second SIGINT)"""

LEVEL_HELP = "debug, info, warning or error, in any case (also $S3STREAM_LOG_LEVEL). [default: info]"
_CHOSEN = "s3stream.log_level_chosen"


class OneLineUsageError(click.UsageError):
    """A usage error shown as one ``s3stream: error:`` line (exit code 2), without click's usage text."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"s3stream: error: {self.format_message()}", err=True, file=file)


class LogLevel(click.Choice[str]):
    """``debug``, ``info``, ``warning`` or ``error``, in any case; anything else is one line naming
    ``--log-level`` (or ``S3STREAM_LOG_LEVEL`` when the value came from there)."""

    def __init__(self) -> None:
        super().__init__(logs.LEVELS, case_sensitive=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return str(super().convert(value, param, ctx)).lower()
        except click.BadParameter:
            source = ctx.get_parameter_source("log_level") if ctx is not None else None
            where = "S3STREAM_LOG_LEVEL" if source is ParameterSource.ENVIRONMENT else "--log-level"
            raise OneLineUsageError(
                f"{where}: {value!r} is not a log level; use one of {', '.join(logs.LEVELS)}", ctx,
            ) from None


def _level_given(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
    """A subcommand's ``--log-level``: applies after (so over) the group's."""
    if value is not None:
        ctx.find_root().meta[_CHOSEN] = True
        logs.configure(value)


def level_chosen(ctx: click.Context) -> bool:
    """Whether the user chose a log level: ``--log-level`` anywhere, or ``S3STREAM_LOG_LEVEL``."""
    root = ctx.find_root()
    return bool(root.meta.get(_CHOSEN)) or root.get_parameter_source("log_level") not in (
        ParameterSource.DEFAULT, None)


def _subcommand_level() -> click.Option:
    return click.Option(["--log-level"], type=LogLevel(), expose_value=False, callback=_level_given,
                        help=LEVEL_HELP)


def _everywhere(command: click.Command) -> None:
    """Give ``command`` and everything under it a ``--log-level`` option."""
    if not any(p.name == "log_level" for p in command.params):
        command.params.append(_subcommand_level())
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _everywhere(sub)


class MainGroup(click.Group):
    """The ``s3stream`` group: before the command line is parsed, every command (whichever module
    registered it) gets ``--log-level`` too, so it may come before or after the subcommand."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        if parent is None:
            for sub in self.commands.values():
                _everywhere(sub)
        return super().make_context(info_name, args, parent, **extra)


def version() -> str:
    """s3stream's version: the installed distribution's, else the package's ``__version__``."""
    try:
        return package_version("s3stream")
    except PackageNotFoundError:
        from s3stream import __version__

        return str(__version__)


def show_version(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"s3stream {version()}")
        ctx.exit()
