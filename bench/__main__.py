"""``python -m bench`` (``make bench``): measure ingest and delivery, profile, print a summary."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from bench import report
from bench.scenarios import MODES, ModeResult, Options, run_mode
from bench.services import ROOT, exit_on_signals

#: Default sizes: full run, and ``--quick``.
FULL = {"batches": 150, "warmup": 5, "embedded_delivery": 1000, "profile_batches": 30}
QUICK = {"batches": 50, "warmup": 3, "embedded_delivery": 400, "profile_batches": 10}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmark crm-notify: HTTP batch ingest (events/s into the outbox), delivery to a "
            "local SMTP sink (messages/s, each checked to arrive exactly once), and "
            "pyinstrument profiles of both paths. Modes: embedded (SQLite, delivery threads "
            "inside serve), redis (PostgreSQL + Redis + crm-notify worker), redis-sqlite "
            "(SQLite + Redis + worker), and embedded-guards and redis-guards: the same with the "
            "guarded workload (marketing consent on every call, a marketing rule with a limit). "
            "Everything started is stopped, and the throw-away "
            "databases and Redis keys are removed, at the end (also on Ctrl-C or SIGTERM)."
        ),
        epilog=(
            "The redis modes need Redis, and the redis mode PostgreSQL, on this machine (see "
            "--redis-url, --postgres-url). A full run takes 5 to 20 minutes on 2 cores, --quick "
            "a few. Figures and logs go to --results-dir; docs/benchmarks.md explains them. "
            "Example: python -m bench --quick --mode embedded --mode redis"
        ),
    )
    parser.add_argument(
        "--mode",
        action="append",
        choices=[*MODES, "all"],
        help="mode to run; repeat for several (default: all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, for a check that it all works"
    )
    parser.add_argument(
        "--batches",
        type=int,
        help=f"measured batches of 100 calls per mode (default: {FULL['batches']}, "
        f"--quick: {QUICK['batches']})",
    )
    parser.add_argument(
        "--connections", type=int, default=8, help="concurrent HTTP clients (default: 8)"
    )
    parser.add_argument(
        "--embedded-delivery",
        type=int,
        help="notifications written pending, besides those ingest left unsent, for the "
        f"embedded delivery measurement (default: {FULL['embedded_delivery']}, --quick: "
        f"{QUICK['embedded_delivery']})",
    )
    parser.add_argument(
        "--worker-processes", type=int, default=2, help="crm-notify worker --processes (2)"
    )
    parser.add_argument(
        "--worker-threads",
        type=int,
        default=4,
        help="delivery threads per worker process, and in embedded serve (4)",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the pyinstrument runs")
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="server on which a throw-away database crm_bench_<tag> is created "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="Redis server; keys go under crm-notify-bench-<tag>: (default: %(default)s)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=ROOT / "bench" / "results",
        help="where logs, profiles and latest.json go (default: bench/results)",
    )
    return parser.parse_args(argv)


def machine() -> dict[str, str]:
    """CPU model, core count, Python version and date of this run."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_signals()
    sizes = QUICK if args.quick else FULL
    names = args.mode or ["all"]
    modes = list(MODES) if "all" in names else list(dict.fromkeys(names))
    options = Options(
        batches=args.batches or sizes["batches"],
        warmup_batches=sizes["warmup"],
        connections=args.connections,
        embedded_delivery=args.embedded_delivery or sizes["embedded_delivery"],
        worker_processes=args.worker_processes,
        worker_threads=args.worker_threads,
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
        results_dir=args.results_dir,
    )
    options.results_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{int(time.time()) % 100000}{os.getpid() % 1000}"
    info = machine()
    print(f"crm-notify bench: {info['cores']} cores, {info['cpu']}, Python {info['python']}")
    started = time.monotonic()
    results: list[ModeResult] = []
    for name in modes:
        print(f"[{time.monotonic() - started:5.0f}s] {name}: running ...", flush=True)
        results.append(run_mode(MODES[name], options, tag))
        print(report.summary(results[-1:]).splitlines()[-1], flush=True)
    profiles: dict[str, object] = {}
    if not args.no_profile:
        from bench.profiling import run_profiles

        print(f"[{time.monotonic() - started:5.0f}s] profiles ...", flush=True)
        profiles = run_profiles(modes, options, tag, batches=sizes["profile_batches"])
    elapsed = time.monotonic() - started
    out = options.results_dir / "latest.json"
    out.write_text(
        json.dumps(
            {
                "machine": info,
                "options": {k: str(v) for k, v in asdict(options).items()},
                "results": [asdict(r) for r in results],
                "profiles": profiles,
                "seconds": round(elapsed),
            },
            indent=2,
        )
    )
    print()
    print(report.summary(results))
    print()
    print(report.details(results))
    if profiles:
        print()
        print(report.profiles(profiles))
    print(f"\n{elapsed:.0f}s; figures in {out}, logs and profiles in {options.results_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
