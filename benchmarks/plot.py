"""The suite's PNG: four panels of medians with min-max whiskers (``report.write`` calls ``plot``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.figures import CONSUMERS, PROFILE_NAMES, PROFILES, extras, med, ok, shown, values

LATENCY_NAMES = {  # the latency panel's bars besides each profile's defaults at 200 msg/s
    "express.poll50": "express\npoll 50 ms",
    "express.minute": "express\na minute",
    "express.tuned": "express, a minute\n5 s dirs",
    "express.moderate": "express\n20 msg/s",
    "express.moderate50": "express, 20 msg/s\npoll 50 ms",
}


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(17, 8), dpi=110)
    profiles = shown(r, {p: f"consume.{p}.s3stream" for p in PROFILES})
    _bars(
        axes[0][0],
        "Consume, 1 msg/object (msg/s, log scale)",
        [PROFILE_NAMES.get(p, p).replace(" (", "\n(") for p in profiles],
        {label: [values(r, f"consume.{p}.{name}") for p in profiles] for name, label in CONSUMERS},
        log=True,
        lines={"target at express: 4,000": 4000},
    )
    lat = shown(r, {p: f"latency.{p}" for p in ("express", *LATENCY_NAMES, "standard", "seaweedfs")})
    _bars(
        axes[0][1],
        "Publish → handler latency, 200 msg/s unless said (ms)",
        [LATENCY_NAMES.get(p, PROFILE_NAMES.get(p, p).replace(" (", "\n(")) for p in lat],
        {
            "p50": [values(r, f"latency.{p}") for p in lat],
            "p99": [extras(r, f"latency.{p}", "p99_ms") for p in lat],
        },
        lines={"p50 target (express) 20 ms": 20, "p99 target (express) 50 ms": 50},
    )
    _bars(
        axes[1][0],
        "Produce under 200 PUT/s per prefix (objects/s)",
        ["1 shard", "8 shards"],
        {"objects/s": [values(r, "shards.1"), values(r, "shards.8")]},
        lines={"cap, 1 shard": 200, "cap, 8 shards": 1600},
    )
    keys = ["segments.express", "produce.express.segments", "produce.express.single"]
    _bars(
        axes[1][1],
        "Express: segments and producing (msg/s, log scale)",
        ["consume seg", "produce seg", "produce 1/obj"],
        {"s3stream": [values(r, k) for k in keys]},
        log=True,
        lines={"consume target": 250_000, "produce target": 150_000},
    )
    one = med(values(r, "groups.1"))
    _bars(
        axes[0][2],
        "Consumer group on this machine, 1 msg/object (msg/s)",
        ["1 member", "2 members", "2 members\n(--processes 2)"],
        {"msg/s": [values(r, k) for k in ("groups.1", "groups.2", "groups.2p")]},
        lines={"1.6 \u00d7 one member": 1.6 * one} if one else None,
    )
    idle = [("wakeup.idle.versions.head.1", "head\n1 shard"),
            ("wakeup.idle.versions.head.4", "head\n4 shards"),
            ("wakeup.idle.versions.listing.4", "listing\n4 shards"),
            ("wakeup.idle.notifications.1", "notifications\n1 shard")]
    _bars(
        axes[1][2],
        "An idle versions shard, a day at S3 Standard prices ($)",
        [label for _, label in idle],
        {"$ per shard-day": [values(r, k) for k, _ in idle]},
        lines={"target $0.05": 0.05},
    )
    fig.suptitle(
        f"s3stream benchmarks {r['date']} (commit {r['machine']['commit']}; bars: median, whiskers: "
        "min\u2013max)",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _bars(
    ax: Any,
    title: str,
    groups: list[str],
    series: dict[str, list[list[Any]]],
    *,
    log: bool = False,
    lines: dict[str, float] | None = None,
) -> None:
    """Grouped bars at the medians with min-max whiskers, and dashed lines at ``lines`` (targets); a
    panel with no figure (its part was not run) says so instead."""
    if not any(med(v) for per_group in series.values() for v in per_group):
        ax.set_title(title, fontsize=10)
        ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    width = 0.8 / max(len(series), 1)
    for i, (name, per_group) in enumerate(series.items()):
        meds = [med(v) or 0.0 for v in per_group]
        low = [m - min(ok(v), default=m) for m, v in zip(meds, per_group, strict=True)]
        high = [max(ok(v), default=m) - m for m, v in zip(meds, per_group, strict=True)]
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, meds, width=width, label=name, yerr=[low, high], capsize=3)
    for (label, y), style in zip((lines or {}).items(), ("--", ":"), strict=False):
        ax.axhline(y, linestyle=style, color="gray", linewidth=1, label=label)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_title(title, fontsize=10)
    if log:
        ax.set_yscale("log")
        smallest = min((m for per_group in series.values() for v in per_group if (m := med(v))), default=1.0)
        ax.set_ylim(bottom=smallest / 2, top=ax.get_ylim()[1] * 30)  # every bar shows; legend room above
    else:
        ax.set_ylim(top=ax.get_ylim()[1] * 1.3)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
