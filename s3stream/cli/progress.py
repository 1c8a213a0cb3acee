"""Progress of long commands on stderr: a progress bar on a terminal, periodic lines otherwise.

The library's long operations (:func:`s3stream.ops.admin.purge`, ``decommission``, ``topic_delete``…) take an
optional ``progress`` callback, called as ``progress(done, total)`` with how many items are done so far
and how many there are (``None`` while unknown); they never print. The command line passes a
:class:`Progress` reporter:

* stderr is a terminal: click's progress bar with the count, the rate, and with a known total the
  percentage and the ETA;
* otherwise (a pipe, a file, a service's log): one line every ``S3STREAM_PROGRESS_INTERVAL`` seconds
  (5 by default; 0 writes a line at every update), ``progress: LABEL: DONE[/TOTAL] UNIT (PCT), RATE/s[,
  ETA]``. The command prints its own summary when the work ends.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from types import TracebackType
from typing import Any, TextIO

import click

INTERVAL_ENV = "S3STREAM_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 5.0


def log_interval() -> float:
    """Seconds between progress lines when stderr is not a terminal (``S3STREAM_PROGRESS_INTERVAL``)."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """A progress reporter for one piece of work; use it as a context manager and pass it (a callable
    ``progress(done, total)``) to the library function doing the work."""

    def __init__(self, label: str, *, unit: str = "items", file: TextIO | None = None,
                 interactive: bool | None = None, interval: float | None = None) -> None:
        self.label = label
        self.unit = unit
        self.file = file if file is not None else sys.stderr
        self.interactive = self.file.isatty() if interactive is None else interactive
        self.interval = log_interval() if interval is None else interval
        self.done = 0
        self.total: int | None = None
        self.started = time.monotonic()
        self._last_line = self.started
        self._bar: Any = None

    def __enter__(self) -> Progress:
        self.started = self._last_line = time.monotonic()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.render_finish()
            self._bar = None

    def __call__(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        if self.interactive:
            self._render_bar()
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self._line()

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def text(self) -> str:
        """``LABEL: DONE[/TOTAL] UNIT (PCT), RATE/s[, ETA Ns]``."""
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        parts = [f"{self.label}: {count} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.0f}%)"
        parts.append(f"{self.rate:.0f}/s")
        if self.total is not None and self.rate > 0:
            parts.append(f"ETA {_duration(max(0, self.total - self.done) / self.rate)}")
        return ", ".join(parts)

    def _line(self) -> None:
        click.echo(f"progress: {self.text()}", file=self.file)

    def _render_bar(self) -> None:
        if self._bar is None:
            self._bar = click.progressbar(
                itertools.repeat(None) if self.total is None else None,  # no total yet: count and rate
                length=self.total, label=self.label, file=self.file, show_pos=True, show_eta=True,
                item_show_func=lambda item: item, update_min_steps=1)
            self._bar.is_hidden = False  # the caller decided: stderr is a terminal
            self._bar.render_progress()
        elif self.total is not None and self._bar.length != self.total:
            self._bar.length = self.total
        step = self.done - self._bar.pos
        self._bar.update(max(0, step), f"{self.rate:.0f} {self.unit}/s")


def reporter(label: str, *, unit: str = "items") -> Progress:
    """A reporter on stderr (a bar on a terminal, lines otherwise)."""
    return Progress(label, unit=unit)
