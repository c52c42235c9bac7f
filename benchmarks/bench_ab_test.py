"""Benchmark the A/B runner: wall time per stage and peak memory of the default config at given sizes.

    python benchmarks/bench_ab_test.py                    # 100k users (the default run)
    python benchmarks/bench_ab_test.py --users 100000 1000000
    python benchmarks/bench_ab_test.py --arms control,random,blanket_coins_1,blanket_trial_7d,blanket_unlock_20,oracle

Each size runs in a fresh process (so numba compilation of the first run and
peak RSS are per size) and writes its outputs to a temporary folder.  Figures
are printed; record them in benchmarks/RECORD_ab_test.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def one(users: int, seed: int, arms: list[str] | None = None) -> dict:
    from experiments.ab_test import run_experiment
    from experiments.config import load_config

    cfg = load_config()
    if arms:
        missing = sorted(set(arms) - {a.label for a in cfg.arms})
        if missing:
            raise SystemExit(f"--arms: {missing} not in the default config's arms {[a.label for a in cfg.arms]}")
        cfg = cfg.model_copy(update={"arms": [a for a in cfg.arms if a.label in arms]})
    cfg = cfg.model_copy(update={"users": users, "seed": seed})
    with tempfile.TemporaryDirectory() as tmp:
        # exploration logs of learned arms are collected inside the timed run (no cache from earlier runs)
        cfg = cfg.model_copy(update={"logs": cfg.logs.model_copy(update={"cache_dir": tmp})})
        t0 = time.perf_counter()
        res = run_experiment(cfg, out_dir=tmp, progress=False)
        wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    peak_mb = ru.ru_maxrss / 1024
    return {"users": users, "arms": len(cfg.arms), "wall_s": round(wall, 2), "peak_rss_mb": round(peak_mb),
            "process_cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
            **{f"{k}_s": round(v, 2) for k, v in res.timings.items()}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, nargs="+", default=[100_000], help="cohort sizes to run (one process each)")
    ap.add_argument("--seed", type=int, default=0, help="run seed")
    ap.add_argument("--arms", default="", help="comma-separated arm names of the default config to keep "
                                               "(default: all its arms)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(one(args.users[0], args.seed, [a for a in args.arms.split(",") if a])))
        return
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()}")
    for n in args.users:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", "--users", str(n), "--seed", str(args.seed),
                              "--arms", args.arms],
                             capture_output=True, text=True, check=True)
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        rec["process_wall_s"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(rec))


if __name__ == "__main__":
    main()
