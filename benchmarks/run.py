"""The benchmark suite, one command: s3stream against the baselines on the S3 emulator.

    .venv/bin/python benchmarks/run.py                 # 3 runs, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --quick         # smaller counts, about 3 minutes
    .venv/bin/python benchmarks/run.py --runs 5 --out /tmp/results --profile /tmp/bench_profile.txt

For each emulator profile (zero, express, standard; see ``benchmarks/emulator/``) it seeds backlogs and
runs every scenario ``--runs`` times, alternating s3stream with the baselines on the same data, and
records the emulator's CPU seconds during each measurement. It writes ``<out>/<YYYY-MM-DD>.md`` (tables
of medians and min-max; comparisons as ratios of runs made side by side), ``<date>.png`` and
``<date>.json`` (the raw figures; ``benchmarks/report.py`` renders them again). Only 127.0.0.1 is
contacted; every loop is bounded in count and time.

The suite itself lives in ``benchmarks/suite.py`` (sizes, bookkeeping, one measurement of each
scenario) and ``benchmarks/profiles.py`` (the scenarios run per emulator profile).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)
os.environ["NO_PROXY"] = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1"]))

from benchmarks import report  # noqa: E402
from benchmarks.profiles import (  # noqa: E402
    run_express,
    run_groups,
    run_seaweedfs,
    run_shards,
    run_standard,
    run_zero,
)
from benchmarks.suite import SIZES, Suite, check_awscli  # noqa: E402
from benchmarks.wakeup import run_wakeup  # noqa: E402

STAGES = {"zero": run_zero, "express": run_express, "standard": run_standard, "shards": run_shards,
          "groups": run_groups, "seaweedfs": run_seaweedfs, "wakeup": run_wakeup}

# --- machine, main ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import aiobotocore

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.TimeoutExpired):
        commit = "unknown"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "aiobotocore": aiobotocore.__version__,
        "platform": platform.platform(),
        "commit": commit,
    }


def _profiles(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in STAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown profile {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(STAGES)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of every scenario (default 3)")
    parser.add_argument(
        "--quick", action="store_const", const="quick", dest="sizes", default="full",
        help="smaller counts (about 3 minutes)",
    )
    parser.add_argument("--sizes", choices=sorted(SIZES), default="full", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--profile", type=Path, help="also write a cProfile top-20 of consume at zero here")
    parser.add_argument(
        "--profiles", type=_profiles, default=list(STAGES), metavar="NAME[,NAME...]",
        help=f"run only these, in this order: {', '.join(STAGES)} (default: all). zero, express and "
        "standard are emulator profiles; shards is 1 shard against 8 under a per-prefix limit; groups "
        "is one consumer-group member against two; seaweedfs starts a local SeaweedFS server; wakeup is "
        "sporadic latency and idle cost with the head object against listing",
    )
    parser.add_argument("--skip-awscli", action="store_true", help="leave the AWS CLI baseline out")
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be between 1 and 20")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from s3stream.service import logs

    logs.configure("warning")
    suite = Suite(args, SIZES[args.sizes])
    print(f"s3stream benchmark suite: {args.sizes} sizes, {args.runs} run(s)", flush=True)
    if args.skip_awscli:
        suite.notes["awscli"] = "AWS CLI baseline left out (--skip-awscli)"
    elif {"zero", "express", "standard", "seaweedfs"} & set(args.profiles):  # the profiles with baselines
        check_awscli(suite)
    for name in args.profiles:
        STAGES[name](suite)
    date = time.strftime("%Y-%m-%d")
    results = {
        "date": date,
        "stem": date if args.profiles == list(STAGES) else "-".join([date, *args.profiles]),
        "started": suite.started,
        "seconds": time.time() - suite.started,
        "sizes_name": args.sizes,
        "sizes": asdict(suite.sizes),
        "runs": args.runs,
        "profiles": args.profiles,
        "machine": machine(),
        "command": " ".join(["benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "series": {k: asdict(v) for k, v in suite.series.items()},
        "notes": suite.notes,
    }
    paths = report.write(results, args.out)
    print(f"wrote {', '.join(str(p) for p in paths)} in {results['seconds'] / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
