"""Speed and memory of the simulated world.  Prints figures; record them in benchmarks/RECORD_world.md.

    python benchmarks/bench_world.py                 # everything (about 3-5 minutes on 2 cores)
    python benchmarks/bench_world.py --quick         # small sizes, a smoke run (under a minute)

Figures (all under one static policy: each user draws one random catalogue action on day 1, no budget):

1. JIT compile: a cold first call in a fresh process with an empty numba cache, a warm first call (cache
   loaded from disk) and the steady-state call, on 1,000 users; compile = first - steady.
2. 1M users x 30 days: cohort generation, model construction and the 30 daily steps (the "simulation wall
   time", compile excluded), best of ``--repeats``; nanoseconds per user-day.
3. 10M users x 30 days in a fresh child process: wall time (cohort + model + steps) and peak RSS.
4. Fast path vs one Python Mesa agent per user (``mode="agents"``, the same kernel stepped user by user) at
   100k users: wall times of the 30 steps and their ratio.
5. Counterfactual twins for K arms (every catalogue action on day 1 via ``static_action_outcomes``) vs one
   simulation of the same cohort: cost ratio (target <= K).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCENARIO = "fanqie_newuser"
DAYS = 30


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kilobytes


def _rss_now_and_peak_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB, from /proc (Linux); (nan, peak) elsewhere."""
    now = peak = float("nan")
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                now = float(line.split()[1]) / 1024.0
            elif line.startswith("VmHWM:"):
                peak = float(line.split()[1]) / 1024.0
    except OSError:
        peak = _peak_rss_mb()
    return now, peak


def _big_run_with_memory(n: int, seed: int = 0) -> dict:
    """One large run with the process's resident memory (now, peak) after each phase."""
    import numpy as np

    from policies.baselines import RandomPolicy
    from sim.model import IncentiveModel
    from sim.population import generate_cohort
    from sim.scenario import load_scenario

    mem = {"start": _rss_now_and_peak_mb()}
    sc = load_scenario(SCENARIO)
    _one_run(1_000)  # JIT / cache load outside the timing
    mem["after_warmup"] = _rss_now_and_peak_mb()
    t0 = time.perf_counter()
    coh = generate_cohort(sc, n, seed=seed)
    t1 = time.perf_counter()
    mem["after_cohort"] = _rss_now_and_peak_mb()
    m = IncentiveModel(sc, coh, RandomPolicy(), seed=seed, days=DAYS)
    t2 = time.perf_counter()
    mem["after_model_init"] = _rss_now_and_peak_mb()
    c2 = time.process_time()
    m.step()  # day 1: the policy's observation and the grants
    mem["after_day1"] = _rss_now_and_peak_mb()
    m.run()
    t3 = time.perf_counter()
    c3 = time.process_time()
    mem["after_30_days"] = _rss_now_and_peak_mb()
    d7 = float(((m.mask >> np.int64(7)) & 1).mean())
    t4 = time.perf_counter()
    m.outcomes()
    t5 = time.perf_counter()
    mem["after_outcomes_frame"] = _rss_now_and_peak_mb()
    return {"users": n, "cohort_s": t1 - t0, "init_s": t2 - t1, "steps_s": t3 - t2, "steps_cpu_s": c3 - c2,
            "total_s": t3 - t0, "outcomes_frame_s": t5 - t4, "d7": d7, "grants": m.ledger.grants,
            "peak_rss_mb": mem["after_30_days"][1], "peak_rss_with_outcomes_mb": mem["after_outcomes_frame"][1],
            "memory_mb": mem}


def _one_run(n: int, seed: int = 0, mode: str = "cohort") -> dict:
    from policies.baselines import RandomPolicy
    from sim.model import IncentiveModel
    from sim.population import generate_cohort
    from sim.scenario import load_scenario

    sc = load_scenario(SCENARIO)
    t0 = time.perf_counter()
    coh = generate_cohort(sc, n, seed=seed)
    t1 = time.perf_counter()
    m = IncentiveModel(sc, coh, RandomPolicy(), seed=seed, days=DAYS, mode=mode)
    t2 = time.perf_counter()
    c2 = time.process_time()
    m.run()
    t3 = time.perf_counter()
    c3 = time.process_time()
    return {"users": n, "cohort_s": t1 - t0, "init_s": t2 - t1, "steps_s": t3 - t2, "steps_cpu_s": c3 - c2,
            "total_s": t3 - t0, "d7": float(m.outcomes()["retained_d7"].mean()), "grants": m.ledger.grants}


def _child(kind: str, n: int) -> None:
    """Entry point of the child processes: print one JSON line."""
    if kind == "compile":
        first = _one_run(n)
        steady = _one_run(n)
        print(json.dumps({"first_s": first["total_s"], "steady_s": steady["total_s"]}))
    elif kind == "big":
        print(json.dumps(_big_run_with_memory(n)))
    else:
        raise ValueError(f"--child: unknown kind {kind!r}")


def _spawn(kind: str, n: int, env_extra: dict | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env_extra or {}))
    res = subprocess.run([sys.executable, __file__, "--child", kind, str(n)], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"child {kind} {n} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_compile() -> dict:
    with tempfile.TemporaryDirectory() as cache:
        cold = _spawn("compile", 1_000, {"NUMBA_CACHE_DIR": cache})
        warm = _spawn("compile", 1_000, {"NUMBA_CACHE_DIR": cache})
    return {
        "cold_first_s": cold["first_s"], "warm_first_s": warm["first_s"], "steady_s": cold["steady_s"],
        "compile_cold_s": cold["first_s"] - cold["steady_s"], "cache_load_s": warm["first_s"] - warm["steady_s"],
    }


def bench_1m(n: int, repeats: int) -> dict:
    _one_run(1_000)  # JIT / cache load outside the timing
    runs = [_one_run(n) for _ in range(repeats)]
    best = min(runs, key=lambda r: r["steps_s"])
    best = dict(best)
    best["steps_s_all"] = [r["steps_s"] for r in runs]
    best["ns_per_user_day"] = best["steps_s"] / (n * DAYS) * 1e9
    return best


def profile_run(n: int) -> dict:
    """Where one run's time goes: per-phase wall time summed over the 30 days (the model's own methods, timed)."""
    from policies.baselines import RandomPolicy
    from sim.model import IncentiveModel
    from sim.population import generate_cohort
    from sim.scenario import load_scenario

    _one_run(1_000)
    sc = load_scenario(SCENARIO)
    coh = generate_cohort(sc, n, seed=0)
    m = IncentiveModel(sc, coh, RandomPolicy(), seed=0, days=DAYS)
    acc = {"policy+ledger (_grant)": 0.0, "kernel (agents.do step)": 0.0, "settle (_settle)": 0.0,
           "datacollector.collect": 0.0}

    def timed(fn, key):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[key] += time.perf_counter() - t
        return wrapper

    m._grant = timed(m._grant, "policy+ledger (_grant)")
    m._settle = timed(m._settle, "settle (_settle)")
    m.datacollector.collect = timed(m.datacollector.collect, "datacollector.collect")
    for agent in list(m.agents):
        agent.step = timed(agent.step, "kernel (agents.do step)")
    t0 = time.perf_counter()
    m.run()
    total = time.perf_counter() - t0
    acc["other (mesa step loop)"] = total - sum(acc.values())
    return {"users": n, "total_s": total, "phases_s": acc}


def bench_agents(n: int) -> dict:
    _one_run(1_000)
    fast = _one_run(n, mode="cohort")
    slow = _one_run(n, mode="agents")
    if abs(fast["d7"] - slow["d7"]) > 0:
        raise RuntimeError("agents mode disagrees with the fast path")
    return {"users": n, "fast_steps_s": fast["steps_s"], "agents_steps_s": slow["steps_s"],
            "agents_init_s": slow["init_s"], "ratio_steps": slow["steps_s"] / fast["steps_s"],
            "fast_steps_cpu_s": fast["steps_cpu_s"], "agents_steps_cpu_s": slow["steps_cpu_s"],
            "ratio_steps_cpu": slow["steps_cpu_s"] / fast["steps_cpu_s"],
            "ratio_total": (slow["init_s"] + slow["steps_s"]) / (fast["init_s"] + fast["steps_s"])}


def bench_twins(n: int) -> dict:
    """Twins for K arms vs one simulation; both wall and process CPU time.

    Baselines, all on the same cohort and including the per-user outcomes frame: one control
    simulation (the cheapest arm: nobody is kept installed by a grant), one simulation under the
    static random policy, and the K arms simulated one by one (their sum is what twins cannot beat).
    """
    from policies.baselines import BlanketPolicy, ControlPolicy, RandomPolicy
    from sim.catalogue import Catalogue
    from sim.model import simulate
    from sim.population import generate_cohort
    from sim.scenario import load_scenario
    from sim.twins import static_action_outcomes

    sc = load_scenario(SCENARIO)
    coh = generate_cohort(sc, n, seed=0)
    cat = Catalogue.from_scenario(sc)
    k = len(cat)
    simulate(sc, ControlPolicy(), n_users=1_000, seed=0)

    def timed(pol):
        t, c = time.perf_counter(), time.process_time()
        simulate(sc, pol, cohort=coh, seed=0).outcomes()
        return time.perf_counter() - t, time.process_time() - c

    control = timed(ControlPolicy())
    random_ = timed(RandomPolicy())
    arms = [timed(ControlPolicy() if a.index == 0 else BlanketPolicy(a.name)) for a in cat]
    t, c = time.perf_counter(), time.process_time()
    static_action_outcomes(sc, coh, seed=0)
    twins = (time.perf_counter() - t, time.process_time() - c)
    sum_arms = (sum(a[0] for a in arms), sum(a[1] for a in arms))
    return {
        "users": n, "arms": k, "twins_s": twins[0], "twins_cpu_s": twins[1],
        "control_s": control[0], "control_cpu_s": control[1], "random_s": random_[0], "random_cpu_s": random_[1],
        "arms_s": [a[0] for a in arms], "arms_cpu_s": [a[1] for a in arms],
        "ratio_vs_control": twins[0] / control[0], "ratio_vs_control_cpu": twins[1] / control[1],
        "ratio_vs_random": twins[0] / random_[0], "ratio_vs_random_cpu": twins[1] / random_[1],
        "ratio_vs_sum_of_arms": twins[0] / sum_arms[0], "ratio_vs_sum_of_arms_cpu": twins[1] / sum_arms[1],
        "ratio_vs_mean_arm_cpu": twins[1] / (sum_arms[1] / k),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="World benchmarks: speed and memory figures (printed).")
    p.add_argument("--quick", action="store_true", help="small sizes (100k / 1M / 20k / 100k) for a smoke run")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the 1M run (best is reported)")
    p.add_argument("--skip-10m", action="store_true", help="skip the 10M-user run")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--child", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return 0
    if args.repeats < 1:
        p.error(f"--repeats: expected an integer >= 1, got {args.repeats}")
    n1, n10, na, nt = (100_000, 1_000_000, 20_000, 100_000) if args.quick else (
        1_000_000, 10_000_000, 100_000, 1_000_000)

    import numba

    info = {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor() or platform.platform()}",
        "python": platform.python_version(),
        "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "load_avg_start": os.getloadavg(),
        "command": "python benchmarks/bench_world.py" + (" --quick" if args.quick else ""),
    }
    print(f"machine: {info['machine']}; python {info['python']}, numba {info['numba']} "
          f"({info['numba_threads']} threads); load average {info['load_avg_start']}")
    out: dict = {"info": info}

    c = out["compile"] = bench_compile()
    print(f"[compile] 1,000 users x {DAYS} days: cold first call {c['cold_first_s']:.2f} s (empty numba cache), "
          f"warm first call {c['warm_first_s']:.2f} s (cache on disk), steady {c['steady_s']:.3f} s -> "
          f"JIT compile {c['compile_cold_s']:.2f} s, cache load {c['cache_load_s']:.2f} s")

    r = out["run_1m"] = bench_1m(n1, args.repeats)
    print(f"[{n1:,} x {DAYS}] simulation (30 steps, compile excluded): {r['steps_s']:.2f} s best of "
          f"{[round(x, 2) for x in r['steps_s_all']]} = {r['ns_per_user_day']:.0f} ns/user-day "
          f"(process CPU time {r['steps_cpu_s']:.2f} s); cohort generation {r['cohort_s']:.2f} s, "
          f"model init {r['init_s']:.2f} s (target: <= 3 s)")
    pr = out["profile_1m"] = profile_run(n1)
    print(f"[{n1:,} x {DAYS}] where the time goes ({pr['total_s']:.2f} s): " + ", ".join(
        f"{k} {v:.2f} s ({100 * v / pr['total_s']:.0f}%)" for k, v in pr["phases_s"].items()))

    if not args.skip_10m:
        b = out["run_10m"] = _spawn("big", n10)
        print(f"[{n10:,} x {DAYS}] wall {b['total_s']:.1f} s (cohort {b['cohort_s']:.1f} s, init "
              f"{b['init_s']:.1f} s, steps {b['steps_s']:.1f} s, CPU {b['steps_cpu_s']:.1f} s); "
              f"peak RSS {b['peak_rss_mb'] / 1024:.2f} GB "
              f"(targets: <= 40 s, <= 4 GB); building the per-user outcomes frame afterwards: "
              f"{b['outcomes_frame_s']:.1f} s, peak RSS {b['peak_rss_with_outcomes_mb'] / 1024:.2f} GB")
        for phase, (now, peak) in b["memory_mb"].items():
            print(f"    memory {phase:<22} RSS {now / 1024:6.2f} GB   peak so far {peak / 1024:6.2f} GB")

    a = out["agents"] = bench_agents(na)
    print(f"[{na:,} x {DAYS}] fast path steps {a['fast_steps_s']:.2f} s vs one Mesa agent per user "
          f"{a['agents_steps_s']:.1f} s (+{a['agents_init_s']:.1f} s to create the agents): ratio "
          f"{a['ratio_steps']:.0f}x on steps, {a['ratio_total']:.0f}x with construction (expect >= 30x); "
          f"process CPU time {a['fast_steps_cpu_s']:.2f} s vs {a['agents_steps_cpu_s']:.1f} s = "
          f"{a['ratio_steps_cpu']:.0f}x")

    t = out["twins"] = bench_twins(nt)
    print(f"[{nt:,} x {DAYS}] twins for K={t['arms']} arms: {t['twins_s']:.1f} s wall, {t['twins_cpu_s']:.1f} s CPU")
    print(f"    vs one control simulation {t['control_s']:.2f} s / {t['control_cpu_s']:.2f} s CPU: ratio "
          f"{t['ratio_vs_control']:.1f} wall, {t['ratio_vs_control_cpu']:.1f} CPU (target <= K = {t['arms']})")
    print(f"    vs one simulation under the static random policy {t['random_s']:.2f} s / {t['random_cpu_s']:.2f} s "
          f"CPU: ratio {t['ratio_vs_random']:.1f} wall, {t['ratio_vs_random_cpu']:.1f} CPU")
    print(f"    vs the K arms simulated one by one (sum {sum(t['arms_s']):.1f} s / {sum(t['arms_cpu_s']):.1f} s CPU): "
          f"ratio {t['ratio_vs_sum_of_arms']:.2f} wall, {t['ratio_vs_sum_of_arms_cpu']:.2f} CPU; "
          f"= {t['ratio_vs_mean_arm_cpu']:.1f} x the mean arm's CPU")
    out["info"]["load_avg_end"] = os.getloadavg()
    print(f"load average at the end: {out['info']['load_avg_end']}")
    if args.json:
        from sim.atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
