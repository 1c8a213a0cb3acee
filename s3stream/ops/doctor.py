"""``s3stream doctor``, the pure part: the features probed, what each s3stream setup needs, the verdict.

The probes themselves (requests to the store) live in :mod:`s3stream.ops.doctorprobes`; the command in
:mod:`s3stream.cli.doctor`. Each probe yields a :class:`Result`: ``yes`` (the store does it), ``no``
(it does not, or only pretends to), ``n.a.`` (the question does not apply to this bucket) or
``error`` (the probe could not tell). A setup (:class:`Setup`: the layout consumed and whether
consumer-group leases are on) needs some features (:func:`needs`); :func:`verdict` says whether the
store has them and, if not, the one line naming the first missing feature and why it is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Outcome = Literal["yes", "no", "n.a.", "error"]
Layout = Literal["versions", "log", "objects"]

VERSIONING = "versioning"
VERSION_PAGING = "version-paging"
DELETE_MARKERS = "delete-markers"
IF_NONE_MATCH = "if-none-match"
IF_MATCH = "if-match"
LIST_ORDER = "list-order"
DIRECTORY_BUCKET = "directory-bucket"
CLOCK_SKEW = "clock-skew"

CLOCK_TOLERANCE_S = 5.0
"""A server clock further than this from ours is reported as ``no`` (s3stream itself reads the
server's clock, so no feature needs it; times this host prints will differ)."""


@dataclass(frozen=True, slots=True)
class Feature:
    """One row of the table: what is probed, and which parts of s3stream rely on it."""

    name: str
    title: str
    affects: str


FEATURES: tuple[Feature, ...] = (
    Feature(VERSIONING, "bucket versioning", "versions layout; history; snapshot fallback and rollback"),
    Feature(VERSION_PAGING, "ListObjectVersions paging (key and version markers)",
            "versions layout: every poll pass; group describe and topic describe"),
    Feature(DELETE_MARKERS, "delete markers listed", "versions layout: deletions delivered as messages"),
    Feature(IF_NONE_MATCH, "If-None-Match put-if-absent refused (412)",
            "log layout writes; topic create; consumer-group leases; checkpoint creation"),
    Feature(IF_MATCH, "If-Match on a stale ETag refused (412)",
            "consumer-group leases and fences; checkpoint commits"),
    Feature(LIST_ORDER, "ListObjectsV2 lexicographic order (StartAfter)",
            "objects layout (unversioned prefixes); log-layout passes over 100,000 objects"),
    Feature(DIRECTORY_BUCKET, "directory bucket (CreateSession, unordered listings)",
            "directory buckets: log layout only"),
    Feature(CLOCK_SKEW, f"server clock within {CLOCK_TOLERANCE_S:.0f} s of ours",
            "nothing (s3stream uses the server's clock); times printed by this host"),
)
FEATURE_BY_NAME = {f.name: f for f in FEATURES}


@dataclass(frozen=True, slots=True)
class Result:
    """What one probe found."""

    feature: str
    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Setup:
    """What a configuration consumes: the layout of its source, and whether leases are on."""

    layout: Layout
    leases: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    """0 when every needed feature is ``yes``; else 1 and one line naming the first one missing."""

    exit_code: int
    line: str


def needs(setup: Setup) -> dict[str, str]:
    """The features ``setup`` cannot do without, each with the reason, in table order."""
    reasons: dict[str, str] = {}
    if setup.layout == "versions":
        reasons[VERSIONING] = "the versions layout follows object versions"
        reasons[VERSION_PAGING] = "the versions layout pages through every version of the prefix"
    if setup.layout == "objects":
        reasons[LIST_ORDER] = "the objects layout (an unversioned prefix) tracks its progress by key order"
    if setup.layout == "log":
        reasons[IF_NONE_MATCH] = "the log layout writes each message with put-if-absent"
    if setup.leases:
        reasons[IF_NONE_MATCH] = "consumer-group leases are created with put-if-absent"
        reasons[IF_MATCH] = "consumer-group leases and checkpoint fences rely on compare-and-swap"
    order = [f.name for f in FEATURES]
    return dict(sorted(reasons.items(), key=lambda item: order.index(item[0])))


def verdict(results: list[Result], setup: Setup) -> Verdict:
    """Whether the store has what ``setup`` needs (see :func:`needs`)."""
    found = {r.feature: r for r in results}
    for feature, reason in needs(setup).items():
        result = found.get(feature)
        if result is None or result.outcome != "yes":
            seen = "not probed" if result is None else f"{result.outcome}: {result.detail}"
            return Verdict(1, f"{feature} is missing ({seen}); it is needed because {reason}")
    return Verdict(0, f"the store has everything the {describe(setup)} needs")


def describe(setup: Setup) -> str:
    """``versions layout``, ``log layout with consumer-group leases``…"""
    return f"{setup.layout} layout" + (" with consumer-group leases" if setup.leases else "")


def conditional_writes(results: list[Result]) -> Result:
    """The two conditional-write probes as one verdict: ``yes`` only if both are."""
    found = {r.feature: r for r in results if r.feature in (IF_NONE_MATCH, IF_MATCH)}
    for feature in (IF_NONE_MATCH, IF_MATCH):
        result = found.get(feature)
        if result is None:
            return Result("conditional-writes", "error", f"{feature} not probed")
        if result.outcome != "yes":
            return Result("conditional-writes", result.outcome, f"{feature}: {result.detail}")
    return Result("conditional-writes", "yes", "If-None-Match and If-Match are enforced")


def render(results: list[Result], setup: Setup) -> list[str]:
    """The table as text lines: feature, result, detail, and what relies on it."""
    width = max(len(f.name) for f in FEATURES)
    needed = needs(setup)
    lines = [f"{'feature':<{width}}  {'result':<6}  detail"]
    for r in results:
        mark = " (needed)" if r.feature in needed else ""
        lines.append(f"{r.feature:<{width}}  {r.outcome:<6}  {r.detail}{mark}")
        lines.append(f"{'':<{width}}  {'':<6}  affects: {FEATURE_BY_NAME[r.feature].affects}")
    lines.append(f"setup: {describe(setup)}")
    return lines


def to_json(bucket: str, results: list[Result], setup: Setup, verdict_: Verdict) -> dict[str, Any]:
    """The report as one JSON-able document."""
    needed = needs(setup)
    return {
        "bucket": bucket,
        "setup": {"layout": setup.layout, "leases": setup.leases},
        "results": [{
            "feature": r.feature, "title": FEATURE_BY_NAME[r.feature].title, "result": r.outcome,
            "detail": r.detail, "affects": FEATURE_BY_NAME[r.feature].affects, "needed": r.feature in needed,
        } for r in results],
        "needs": needed,
        "exit_code": verdict_.exit_code,
        "verdict": verdict_.line,
    }
