"""Plugins: the small protocols a plugin implements, and how a name finds one.

Three kinds of plugin are named in a configuration, each with an entry-point group of its own:

============================  ===============================  ======================================
group                         names                            what the entry point gives
============================  ===============================  ======================================
``s3stream.handlers``         ``[handlers.X] use``, ``handler``  a handler or a handler factory
                                                                 (see :mod:`s3stream.handlers`)
``s3stream.codecs``           a source's or producer's         a :class:`Codec`, or a class whose
                              ``codec``                        instances are one
``s3stream.snapshot_parsers``  ``snapshot serve --parser``,     a :class:`SnapshotParser`
                              ``[snapshot] parser``
============================  ===============================  ======================================

Built-in names (``json``, ``csv``…) are always there; entry points add names (a built-in name wins).
Any kind may also be named ``package.module:attr``. An unknown name is a one-line error listing the
names available.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from s3stream.errors import ConfigError

CODECS_GROUP = "s3stream.codecs"
PARSERS_GROUP = "s3stream.snapshot_parsers"
HANDLERS_GROUP = "s3stream.handlers"


@runtime_checkable
class Codec(Protocol):
    """How one message body (a frame: a whole object, or one line with framing ``lines``) becomes a
    value and back. ``decode`` raises ``ValueError`` for bytes it cannot read (the object is then
    dead-lettered with that reason); ``encode`` raises ``ValueError`` or ``TypeError`` for a value it
    cannot write (``publish`` fails naming it). Both are called on the event loop: keep them quick."""

    def decode(self, frame: bytes) -> Any: ...

    def encode(self, value: Any) -> bytes: ...


@runtime_checkable
class SnapshotParser(Protocol):
    """A key-value file's bytes to a ``str``-keyed mapping; raises on a version that must not be served."""

    def __call__(self, body: bytes) -> Mapping[str, Any]: ...


def registered(group: str) -> list[str]:
    """The names the installed distributions register in entry-point ``group``, sorted."""
    return sorted({ep.name for ep in entry_points(group=group)})


def available(group: str, builtin: Iterable[str]) -> list[str]:
    """Built-in names first, then the entry points' other names."""
    names = list(builtin)
    return names + [name for name in registered(group) if name not in names]


def unknown(kind: str, name: str, group: str, builtin: Iterable[str]) -> str:
    """The one line for a name that is neither built in nor registered."""
    return f"unknown {kind} {name!r}; available: {', '.join(available(group, builtin))}, or module:attr"


def is_known(name: str, group: str, builtin: Iterable[str]) -> bool:
    """Whether ``name`` is built in, registered in ``group``, or a ``module:attr`` spec."""
    return name in builtin or ":" in name or bool(entry_points(group=group, name=name))


def load(kind: str, spec: str, group: str, builtin: Iterable[str] = (),
         error: type[Exception] = ConfigError) -> Any:
    """The object ``spec`` names: ``module:attr``, else the entry point of that name in ``group``.
    Every failure is ``error`` with one line naming the spec (the module's own exception as text)."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
        except Exception as exc:  # ImportError, and whatever the module raises while importing
            raise error(f"{kind} {spec!r} cannot be loaded: {exc}") from None
        return target
    found = entry_points(group=group, name=spec)
    if not found:
        raise error(unknown(kind, spec, group, builtin))
    try:
        return next(iter(found)).load()
    except Exception as exc:
        raise error(f"{kind} {spec!r} failed to load: {exc}") from None


def load_codec(spec: str) -> Codec:
    """The :class:`Codec` a name that is not built in stands for (an instance; a class is instantiated
    without arguments), or ConfigError."""
    from s3stream.integrations.codecs import BUILTIN_CODECS

    target = load("codec", spec, CODECS_GROUP, BUILTIN_CODECS)
    if inspect.isclass(target):
        try:
            target = target()
        except Exception as exc:
            raise ConfigError(f"codec {spec!r} could not be built: {exc}") from None
    if not isinstance(target, Codec):
        raise ConfigError(f"codec {spec!r} must have decode(bytes) and encode(value) methods "
                          f"(got a {type(target).__name__})")
    return target


def check_codec(name: str) -> str:
    """A setting's validator: ``name`` if it can name a codec (ValueError listing them otherwise)."""
    from s3stream.integrations.codecs import BUILTIN_CODECS

    if not is_known(name, CODECS_GROUP, BUILTIN_CODECS):
        raise ValueError(unknown("codec", name, CODECS_GROUP, BUILTIN_CODECS))
    return name
