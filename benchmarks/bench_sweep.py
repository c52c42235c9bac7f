"""Time one sweep point per arm of a sweep file (in this process) and estimate the whole sweep's time.

    python benchmarks/bench_sweep.py --config experiments/sweeps/budget.toml
    python benchmarks/bench_sweep.py --config experiments/sweeps/budget.toml --users 100000 --workers 2

For each distinct arm of the sweep (first scenario, first replicate, the
arm's largest finite budget) it runs the point once to warm up caches (numba,
exploration logs) and once timed, and prints wall and CPU seconds.  The
estimate of the sweep's time assumes the points of each arm cost the same at
every budget, and ``workers`` independent processes sharing the machine's cores;
it is a guide, not a measurement: the measured times of the shipped sweeps are
in benchmarks/RECORD_sweep.md.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections import defaultdict

from experiments.sweep import run_point
from experiments.sweep_config import load_sweep, sweep_from_dict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="sweep TOML file")
    ap.add_argument("--users", type=int, default=None, help="override experiment.users")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers assumed for the estimate")
    ap.add_argument("--threads", type=int, default=None, help="numba/torch threads per run (default: all)")
    args = ap.parse_args(argv)

    plan = load_sweep(args.config)
    if args.users is not None:
        import tomllib

        data = tomllib.loads(open(args.config, encoding="utf-8").read())
        data.setdefault("experiment", {})["users"] = args.users
        plan = sweep_from_dict(data, source=args.config, default_name=plan.sweep_id)
    by_arm: dict[str, list] = defaultdict(list)
    for p in plan.points:
        by_arm[p.arm].append(p)
    users = plan.points[0].config["users"]
    print(f"sweep {plan.sweep_id}: {len(plan.points)} points, {users} users per run, "
          f"{os.cpu_count()} cores, {args.workers} worker(s)")
    print(f"{'arm':40s} {'points':>6s} {'wall s':>8s} {'cpu s':>8s}")
    total_cpu = 0.0
    for arm, pts in sorted(by_arm.items()):
        finite = [p for p in pts if math.isfinite(p.budget)] or pts
        p = max(finite, key=lambda q: (q.budget, -q.replicate))
        warm = run_point(p.to_dict(), args.threads)
        if warm["status"] != "ok":
            print(f"{arm:40s} FAILED: {warm['error']}")
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        rec = run_point(p.to_dict(), args.threads)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        total_cpu += cpu * len(pts)
        print(f"{arm:40s} {len(pts):6d} {wall:8.2f} {cpu:8.2f}   ({rec['status']})")
    cores = os.cpu_count() or 1
    print(f"estimated sweep CPU time: {total_cpu:.0f} s; wall on {cores} cores (ideal): "
          f"{total_cpu / min(cores, max(1, args.workers)) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
