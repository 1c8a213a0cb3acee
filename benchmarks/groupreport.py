"""The report's consumer-group section: one member against two on this machine (``run_groups``)."""

from __future__ import annotations

from typing import Any

from benchmarks.figures import TIMES, extras, med, num, ok, ratios, spread, table, values

GOAL = 1.6
KEYS = (
    ("groups.1", "1", "one `s3stream consume` process"),
    ("groups.2", "2", "two `s3stream consume` processes"),
    ("groups.2p", "2", "one `s3stream consume --processes 2`"),
)


def groups_target(r: dict[str, Any]) -> tuple[str, list[Any], str, float, bool, str]:
    """The summary row: two members (separate processes) over one, per run."""
    return ("2 group members ÷ 1 member, this machine", ratios(values(r, "groups.2"), values(r, "groups.1")),
            TIMES, GOAL, False, f"≥ {GOAL}{TIMES}")


def ceiling(r: dict[str, Any]) -> tuple[float, float, float] | None:
    """From the one-member runs: its client CPU and the server's CPU per message (µs), and the ratio
    two members could reach at most if they shared this machine's cores with the server."""
    client = med(extras(r, "groups.1", "cpu_us"))
    server = med([e["server_cpu_s"] / e["messages"] * 1e6 for e in r["series"]["groups.1"]["extra"]
                  if e.get("messages")]) if "groups.1" in r["series"] else None
    cores = r["machine"].get("cores") or 1
    if client is None or server is None:
        return None
    one = min(1.0, cores / (client + server) * client)  # one member: its own core, at most
    two = min(2.0, cores / (client + server) * client)  # both members and the server share the cores
    return client, server, two / one


def groups_section(r: dict[str, Any]) -> str:
    if not any(key in r["series"] for key, _, _ in KEYS):
        return ""
    one = values(r, "groups.1")
    rows = []
    for key, members, how in KEYS:
        v = values(r, key)
        each = ratios(v, one)
        ratio = "1" if key == "groups.1" else f"{num(med(each), TIMES)} ({spread(each, TIMES)})"
        rows.append([members, how, num(med(v)), spread(v), str(len(ok(v))),
                     num(med(extras(r, key, "cpu_us"))), num(med(extras(r, key, "server_cpu_pct")), " %"),
                     num(med(extras(r, key, "start_spread_s")), " s"), ratio])
    s, cores = r["sizes"], r["machine"].get("cores")
    text = (
        "## Consumer groups: one member against two\n\n"
        f"A backlog of {s.get('group_backlog', 0):,} one-message objects in {s.get('group_shards', 0)} "
        "shards (versions layout, zero profile), consumed by a fresh group of one or two members, each "
        "member a process of its own (`s3stream consume --lease-duration 6`, the members started "
        "together), with a handler that counts. The rate is the backlog over the time from the first "
        "message any member handled to the last (process start-up and the first lease round left out); "
        "client CPU is the members' CPU over the same stretch, per message; server CPU is the emulator's "
        "over the whole measurement; \"starts apart\" is how long after the first member's first message "
        "the last member handled its first (it counts against two members). The machine has "
        f"{cores} cores, shared by the members and the emulator.\n\n"
        + table(["members", "how", "median msg/s", "min\u2013max", "runs", "client CPU µs/msg", "server CPU",
                 "members' starts apart", "÷ 1 member"], rows)
    )
    found = ceiling(r)
    if found is not None:
        client, server, most = found
        text += (
            f"\n\nOne member spends {num(client)} µs of client CPU per message and the emulator "
            f"{num(server)} µs; when a lone member keeps its own core busy, two members are limited by the "
            f"{cores} cores they share with the emulator, so on this machine two members reach at most "
            f"**{num(most, TIMES)}** one member's rate ({cores} \u00d7 client \u00f7 (client + server), "
            "at most 2\u00d7). Against a remote S3 the server's CPU is not on this machine and the "
            "ceiling is the number of cores."
        )
    return text
