"""Reading the suite's results (``<date>.json``): the series shared by the markdown and the plot, and
how a figure is written in a table."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

TIMES = "\u00d7"
PROFILES = ("zero", "express", "standard", "seaweedfs")
PROFILE_NAMES = {"seaweedfs": "SeaweedFS (local server)"}  # in tables and the plot; else the name itself
CONSUMERS = (
    ("s3stream", "s3stream Consumer"),
    ("aiobotocore", "aiobotocore queue, 64 workers"),
    ("boto3", "boto3 sequential"),
    ("awscli", "AWS CLI walkthrough loop"),
)


def shown(results: dict[str, Any], keys: dict[str, str]) -> list[str]:
    """The profiles (``keys``: profile -> series key) that have figures; all of them when none has."""
    present = [p for p, key in keys.items() if key in results["series"]]
    return present or list(keys)


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


def num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "\u2013"
    digits = 0 if abs(x) >= 100 or x == int(x) else 1 if abs(x) >= 10 else 2
    return f"{x:,.{digits}f}{unit}"


def spread(vals: Iterable[Any], unit: str = "") -> str:
    good = ok(vals)
    if not good:
        return "\u2013"
    return (
        num(min(good), unit)
        if len(good) == 1
        else f"{num(min(good))}\u2013{num(max(good), unit)}"
    )


def ratios(top: list[float | None], bottom: list[float | None]) -> list[float]:
    """Per-run ratios of two series measured side by side (runs where both succeeded)."""
    return [a / b for a, b in zip(top, bottom, strict=False) if a is not None and b]


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table; a row with more or fewer cells than the header is refused, not misaligned."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"a row of {len(row)} cells under a header of {len(header)}: {row}")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def met(value: float | None, target: float, *, at_most: bool = False) -> str:
    if value is None:
        return "no figure"
    return "yes" if (value <= target if at_most else value >= target) else "**no**"
