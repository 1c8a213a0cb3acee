"""Routing: one source's messages to several handlers by key prefix or glob pattern (the tenant-router
tenant router).

``[[sources.routes]]`` rules are tried in order; the first whose ``prefix`` starts the key, or whose
``pattern`` (``fnmatch`` glob over the whole key; ``*`` also matches ``/``) matches it, names the
handler; a key no rule matches goes to the source's own ``handler``. A router is itself a handler, so
retries, timeouts and dead letters work per message exactly as for a single handler.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

from s3stream.config import RouteSettings, SourceSettings
from s3stream.errors import ConfigError
from s3stream.message import Message
from s3stream.pipeline.handlers import Handler


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled route: keys starting with ``prefix`` or matching ``pattern`` go to ``handler``."""

    handler: Handler
    prefix: str | None = None
    pattern: re.Pattern[str] | None = None

    def matches(self, key: str) -> bool:
        if self.prefix is not None:
            return key.startswith(self.prefix)
        assert self.pattern is not None
        return self.pattern.fullmatch(key) is not None


class Router:
    """Hands each message to the first matching rule's handler, else to the default."""

    def __init__(self, rules: list[Rule], default: Handler) -> None:
        self.rules = rules
        self.default = default

    def pick(self, key: str) -> Handler:
        """The handler for ``key``."""
        for rule in self.rules:
            if rule.matches(key):
                return rule.handler
        return self.default

    async def handle(self, message: Message) -> None:
        await self.pick(message.key).handle(message)

    async def close(self) -> None:
        """The routed handlers belong to the consumer, which closes each one once."""


def handler_names(src: SourceSettings) -> list[str]:
    """Every handler a source uses: its default, then each route's."""
    return [src.handler, *(route.handler for route in src.routes)]


def source_handler(src: SourceSettings, handlers: Mapping[str, Handler]) -> Handler:
    """The handler for a source's shards: its own, or a router over its routes."""
    default = handlers[src.handler]
    if not src.routes:
        return default
    rules = [_rule(src, i, route, handlers) for i, route in enumerate(src.routes)]
    router = Router(rules, default)
    names = "|".join(route.handler for route in src.routes)
    return Handler(name=f"routes({names}|{src.handler})", handle=router.handle, close=router.close)


def _rule(src: SourceSettings, i: int, route: RouteSettings, handlers: Mapping[str, Handler]) -> Rule:
    handler = handlers[route.handler]
    if route.prefix is not None:
        if not (route.prefix.startswith(src.prefix) or src.prefix.startswith(route.prefix)):
            raise ConfigError(f"sources ({src.url}): routes.{i}.prefix: {route.prefix!r} is outside the "
                              f"source's prefix {src.prefix!r}, so it would never match")
        return Rule(handler=handler, prefix=route.prefix)
    assert route.pattern is not None
    return Rule(handler=handler, pattern=re.compile(fnmatch.translate(route.pattern)))
