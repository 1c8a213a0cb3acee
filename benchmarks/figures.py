"""Reading the suite's results (``<date>.json``): the series shared by the markdown and the plot."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

PROFILES = ("zero", "express", "standard")
CONSUMERS = (
    ("s3stream", "s3stream Consumer"),
    ("aiobotocore", "aiobotocore queue, 64 workers"),
    ("boto3", "boto3 sequential"),
    ("awscli", "AWS CLI walkthrough loop"),
)


def values(results: dict[str, Any], key: str) -> list[float | None]:
    series = results["series"].get(key)
    return list(series["values"]) if series else []


def extras(results: dict[str, Any], key: str, field: str) -> list[Any]:
    series = results["series"].get(key)
    return [e.get(field) for e in series["extra"]] if series else []


def ok(vals: Iterable[Any]) -> list[float]:
    return [float(v) for v in vals if isinstance(v, int | float)]


def med(vals: Iterable[Any]) -> float | None:
    good = ok(vals)
    return statistics.median(good) if good else None
