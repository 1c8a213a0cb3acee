"""The progress callback the library's long operations take: ``progress(done, total)``.

``done`` is how many items are done so far and ``total`` how many there are (``None`` while unknown).
The library never prints; the command line passes a reporter (:mod:`s3stream.cli.progress`).
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[int, "int | None"], None]
