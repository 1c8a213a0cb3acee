"""Logging: where s3stream's log events go, as a library and as the ``s3stream`` command.

As a library s3stream never configures logging and never writes to standard output. Every module
logs through :func:`get_logger`, whose events go

- through the application's own structlog configuration, untouched, when the application has
  configured structlog (``structlog.configure``), and
- otherwise to the standard library logger of the same name (``s3stream.pipeline.workers``,
  ``s3stream.pipeline.consumer``, …; all under ``s3stream``), one record per event: the event and its fields
  as ``event key=value …`` in the message, a traceback as the record's ``exc_info``. So the
  application's ``logging`` configuration (levels, handlers, formatters) applies, and with none at all
  Python prints warnings and errors to standard error. structlog's own defaults would print every
  event to standard output, which is where a consumer's data may go.

Only the command line calls :func:`configure`: JSON lines on standard error when it is not a
terminal, readable console lines when it is, tracebacks included (``exception`` in JSON: a list of
frames, at most ``MAX_FRAMES``; the console prints Python's plain traceback).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error")
MAX_FRAMES = 20  # frames of a traceback in a JSON log line: the first and last ten


def get_logger(name: str) -> Any:
    """The logger a library module uses (see the module docstring for where its events go)."""
    return LibraryLogger(name, {})


class LibraryLogger:
    """A structlog-style logger (``bind``, ``debug`` … ``exception``) that decides at each event where
    it goes: the application's structlog configuration if there is one, else stdlib ``logging``."""

    __slots__ = ("_context", "_name")

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._name = name
        self._context = context

    def bind(self, **values: Any) -> LibraryLogger:
        return LibraryLogger(self._name, {**self._context, **values})

    def new(self, **values: Any) -> LibraryLogger:
        return LibraryLogger(self._name, dict(values))

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        if structlog.is_configured():
            target: Any = structlog.get_logger(self._name)
        else:
            level = _LEVELS.get(method)
            if level is not None and not logging.getLogger(self._name).isEnabledFor(level):
                return _nothing  # a level the application does not log: skip building the event
            target = _stdlib_logger(self._name)
        return getattr(target.bind(**self._context) if self._context else target, method)


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
           "critical": logging.CRITICAL, "fatal": logging.CRITICAL}


def _nothing(*_: Any, **__: Any) -> None:
    return None


def _stdlib_logger(name: str) -> Any:
    return structlog.wrap_logger(logging.getLogger(name), processors=_STDLIB_CHAIN,
                                 wrapper_class=structlog.stdlib.BoundLogger,
                                 context_class=dict, cache_logger_on_first_use=False)


def _to_record(_: Any, __: str, event: structlog.typing.EventDict) -> Any:
    """The last processor on the stdlib path: ``event key=value …`` as the message, the traceback as
    ``exc_info`` (the application's formatter prints it)."""
    exc_info = event.pop("exc_info", None)
    text = str(event.pop("event", ""))
    fields = " ".join(f"{key}={value!r}" if isinstance(value, str) and (" " in value or not value)
                      else f"{key}={value}" for key, value in event.items())
    message = f"{text} {fields}" if fields else text
    return (message,), ({"exc_info": exc_info} if exc_info else {})


_STDLIB_CHAIN: list[Any] = [structlog.stdlib.filter_by_level, structlog.contextvars.merge_contextvars,
                            _to_record]


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """The command line's logging: s3stream's events on stderr at ``level`` (stdout is for handlers
    such as ``stdout``), with tracebacks."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        numeric = logging.INFO
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: list[structlog.typing.Processor] = (
        [structlog.processors.ExceptionRenderer(
            structlog.tracebacks.ExceptionDictTransformer(show_locals=False, max_frames=MAX_FRAMES)),
         structlog.processors.JSONRenderer()]
        if use_json else
        [structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
