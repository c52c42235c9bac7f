"""Sweeps: many A/B runs over scenarios, policy settings, budgets and seeds; resumable; local or on Ray.

    python -m experiments.sweep --config experiments/sweeps/budget.toml                 # all cores
    python -m experiments.sweep --config experiments/sweeps/budget.toml --workers 2
    python -m experiments.sweep --config experiments/sweeps/robustness.toml --backend ray   # local Ray
    python -m experiments.sweep --config FILE --backend ray --address ray://head:10001      # a Ray cluster
    python -m experiments.sweep --config FILE --dry-run                                     # validate, list

Steps:

1. read the sweep file and expand it into points (scenario x arm x budget x
   replicate), building and checking every point's A/B config: a bad file is
   rejected with the field named before anything runs or is written
   (:mod:`experiments.sweep_config`);
2. under ``<out>/<sweep-id>/`` (default ``results/sweeps/<name>/``), take a
   lock (one sweep process per folder), write ``sweep.json`` (the plan), and
   skip every point that already has a run file (failed ones too, unless
   ``--retry-failed``);
3. run the other points with ``experiments.ab_test.run_experiment(...,
   write=False)`` in a process pool (spawn context; ``--workers 1`` runs them
   in this process) or as Ray tasks; as each run finishes, this process writes
   ``runs/<point-id>.json`` atomically (temporary file + ``os.replace``): the
   run's summary rows and status, or its error and traceback; a failing run
   does not stop the others;
4. aggregate the run files, sorted by point id (so the tables do not depend on
   the backend, the number of workers or the finishing order) into
   ``table.csv``, ``table.md``, ``runs.csv``, ``frontier.png``, ``ranks.png``
   and ``report.md`` (:mod:`experiments.aggregate`).

Killed (even with SIGKILL) and started again with the same command, a sweep
continues where it stopped: finished runs are kept as they are and not rerun.
Exit status: 0 all runs succeeded, 1 some runs failed (recorded), 2 bad sweep
file or arguments, 3 the sweep folder is locked by another sweep, 130 interrupted.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import pickle
import platform
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments.sweep_config import Plan, Point, SweepConfigError, load_sweep
from sim.atomic import write_bytes_atomic

RUNS = "runs"
PLAN_FILE = "sweep.json"
LOCK_FILE = ".lock"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


class SweepError(RuntimeError):
    """The sweep cannot run (folder locked, workers crashed); finished runs are kept."""


class ScenarioChanged(RuntimeError):
    """A scenario file was edited after the sweep was planned: the run would not match its point id."""


class SweepLocked(SweepError):
    """Another sweep process holds the folder's lock."""


# ----------------------------------------------------------------------
# one point (runs in a worker)
def _py(v: Any) -> Any:
    """Plain JSON-able Python value (floats keep their exact repr; NaN/inf allowed)."""
    import numpy as np

    if isinstance(v, np.bool_ | bool):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating | float):
        return float(v)
    if v is None or isinstance(v, int | str):
        return v
    try:
        import pandas as pd

        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


def _limit_threads(threads: int | None) -> None:
    if not threads:
        return
    import numba

    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, int(threads)))


# Fitted policies of this worker process, keyed by (policy class and settings, logs, fit context): the
# points of one cell that differ only in their budget fit the same policy on the same logs, so a fit is
# done once per worker and deep-copied for the others.  Fits are deterministic given their inputs, so a
# cached fit gives the same run as a fresh one (tests/test_sweep.py checks it).
_FIT_CACHE: OrderedDict[str, Any] = OrderedDict()
FIT_CACHE_SIZE = 16
_fit_stats = {"hits": 0, "misses": 0}


def _digest(v: Any) -> str | None:
    """A deterministic digest of a fit input, or None if it has none (then nothing is cached)."""
    import numpy as np
    import pandas as pd

    if v is None or isinstance(v, bool | int | float | str):
        return repr(v)
    if isinstance(v, pd.DataFrame):
        h = hashlib.sha256(pd.util.hash_pandas_object(v, index=True).to_numpy().tobytes())
        h.update(repr(list(v.columns)).encode())
        return h.hexdigest()
    if isinstance(v, np.ndarray):
        return hashlib.sha256(v.tobytes() + repr((v.dtype.str, v.shape)).encode()).hexdigest()
    if hasattr(v, "model_dump_json"):
        return hashlib.sha256(v.model_dump_json().encode()).hexdigest()
    if isinstance(v, dict | list | tuple):
        parts = [_digest(x) for x in (sorted(v.items(), key=lambda kv: str(kv[0])) if isinstance(v, dict) else v)]
        return None if any(x is None for x in parts) else hashlib.sha256(repr(parts).encode()).hexdigest()
    r = repr(v)
    return None if " at 0x" in r else r


def _copy(obj: Any) -> Any:
    """A deep copy; through pickle for objects deepcopy refuses (e.g. torch modules with non-leaf tensors).

    The pickle round trip copies an object this process built a moment ago, in memory: no file and no
    bytes from elsewhere are ever unpickled (persisted models load through their safe formats)."""
    try:
        return copy.deepcopy(obj)
    except Exception:
        return pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _cached_fit(orig: Callable) -> Callable:
    def fit(policy: Any, logs: Any, context: dict) -> Any:
        if getattr(policy, "reads_truth", False) or getattr(policy, "fit", None) is None:
            return orig(policy, logs, context)
        cls = type(policy)
        parts = [f"{cls.__module__}.{cls.__qualname__}", _digest(vars(policy)), _digest(logs),
                 _digest({k: (v if k != "catalogue" else repr(v)) for k, v in context.items()})]
        if any(p is None for p in parts):
            return orig(policy, logs, context)
        key = hashlib.sha256(repr(parts).encode()).hexdigest()
        if key in _FIT_CACHE:
            _FIT_CACHE.move_to_end(key)
            _fit_stats["hits"] += 1
            return _copy(_FIT_CACHE[key])
        fitted = orig(policy, logs, context)
        _fit_stats["misses"] += 1
        try:
            _FIT_CACHE[key] = _copy(fitted)
        except Exception:  # an uncopyable fitted policy is simply not cached
            return fitted
        while len(_FIT_CACHE) > FIT_CACHE_SIZE:
            _FIT_CACHE.popitem(last=False)
        return fitted

    return fit


def run_point(point: dict[str, Any], threads: int | None = None, fit_cache: bool = True) -> dict[str, Any]:
    """Run one point's A/B experiment in memory; return its run record (never raises for a failing run)."""
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"point_id": point["point_id"], "point": point, "host": platform.node()}
    import experiments.ab_test as ab

    orig_fit = ab._fit
    try:
        _limit_threads(threads)
        expected = point.get("scenario_hash")
        if expected:
            from experiments.sweep_config import scenario_digest

            now = scenario_digest(point["config"]["scenario"])
            if now != expected:
                raise ScenarioChanged(
                    f"scenario {point['config']['scenario']!r} changed since the sweep was planned "
                    f"(content hash {now}, planned {expected}); start the sweep again: the new scenario's points "
                    "get new ids and run, these are ignored")
        if fit_cache:
            ab._fit = _cached_fit(orig_fit)
        res = ab.run_experiment(point["config"], progress=False, write=False)
        rows = [{k: _py(v) for k, v in row.items()} for row in res.summary.to_dict(orient="records")]
        rec.update(status="ok", summary=rows, error=None, traceback=None,
                   timings={k: round(float(v), 3) for k, v in res.timings.items()})
    except Exception as err:  # a failing run is recorded, never fatal to the sweep
        rec.update(status="failed", summary=None, error=f"{type(err).__name__}: {err}",
                   traceback=traceback.format_exc(), timings={})
    finally:
        ab._fit = orig_fit
    rec["elapsed_s"] = round(time.perf_counter() - t0, 3)
    return rec


def _worker_init(threads: int) -> None:
    """Process-pool initializer: one worker's share of the cores for numba/torch/BLAS (set before they load).

    A spawned worker may already have imported numba (unpickling the task imports this module and the
    simulator), with its thread count read from the parent's environment.  numba re-reads the environment
    whenever it compiles, and refuses a thread count that differs from the one its pool was launched with;
    so its configuration is reloaded here, before any pool is launched, or every run that compiles a kernel
    (a cold cache, e.g. a fresh clone) would fail.
    """
    for k in THREAD_ENV:
        os.environ[k] = str(threads)
    if "numba" in sys.modules:
        from numba.core import config

        config.reload_config()


# ----------------------------------------------------------------------
# files
def write_json_atomic(path: Path, obj: Any) -> Path:
    """Write JSON through a temporary file in the same folder and an atomic rename (never a half-written file)."""
    text = json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def run_path(sweep_dir: Path, point_id: str) -> Path:
    return Path(sweep_dir) / RUNS / f"{point_id}.json"


def read_run(path: Path) -> dict[str, Any] | None:
    """A run record, or None if the file is missing or unreadable."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("status") not in ("ok", "failed"):
        return None
    return rec


class _Lock:
    """An exclusive ``flock`` on ``<sweep-dir>/.lock`` (released by the OS when the process dies, even SIGKILL)."""

    def __init__(self, sweep_dir: Path) -> None:
        self.path = Path(sweep_dir) / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> _Lock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise SweepLocked(f"{self.path.parent}: another sweep process is running in this folder (lock held on "
                              f"{self.path}); wait for it to finish or stop it, then run again") from None
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# ----------------------------------------------------------------------
@dataclass
class SweepResult:
    sweep_dir: Path
    planned: int
    skipped: int
    ran: int
    ok: int
    failed: int
    outputs: dict[str, Path] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def failed_ids(self) -> list[str]:
        out = []
        for p in sorted((self.sweep_dir / RUNS).glob("*.json")):
            rec = read_run(p)
            if rec is not None and rec["status"] == "failed":
                out.append(rec["point_id"])
        return out


def sweep_dir_of(plan: Plan, out: str | Path | None = None) -> Path:
    return Path(out if out is not None else plan.config.out_dir) / plan.sweep_id


def split_done(plan: Plan, sweep_dir: Path, retry_failed: bool = False) -> tuple[list[Point], int, int]:
    """(points to run, finished ok, finished failed-and-kept) from the run files on disk."""
    todo, ok, failed = [], 0, 0
    for p in plan.points:
        rec = read_run(run_path(sweep_dir, p.point_id))
        if rec is None or rec.get("point_id") != p.point_id:
            todo.append(p)
        elif rec["status"] == "ok":
            ok += 1
        elif retry_failed:
            todo.append(p)
        else:
            failed += 1
    return todo, ok, failed


def _submission_order(points: list[Point]) -> list[Point]:
    """Replicate-major, so a partial sweep already covers every cell; then budget-major, so that the
    points of one arm at successive budgets are spread out (each worker fits an arm once per replicate)."""
    return sorted(points, key=lambda p: (p.replicate, p.scenario, p.budget, p.point_id))


def _failed_record(p: Point, err: BaseException, tb: str) -> dict[str, Any]:
    return {"point_id": p.point_id, "point": p.to_dict(), "host": None, "status": "failed", "summary": None,
            "error": f"{type(err).__name__}: {err}", "traceback": tb, "timings": {}, "elapsed_s": math.nan}


def _run_serial(points: list[Point], on_result: Callable[[dict], None], fit_cache: bool = True) -> None:
    for p in points:
        on_result(run_point(p.to_dict(), None, fit_cache))


def _run_local(points: list[Point], workers: int, on_result: Callable[[dict], None], fit_cache: bool = True) -> None:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")  # no fork: numba's threading layer and torch do not survive it reliably
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(threads,))
    try:
        futures = {ex.submit(run_point, p.to_dict(), threads, fit_cache): p for p in points}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: futures[f].point_id):
                try:
                    rec = fut.result()
                except BrokenProcessPool:
                    raise SweepError("a worker process died (out of memory or killed); finished runs are saved, "
                                     "run the same command again to resume") from None
                except Exception as err:  # e.g. a result that cannot be pickled: record it
                    rec = _failed_record(futures[fut], err, traceback.format_exc())
                on_result(rec)
    except BaseException:
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def _run_ray(points: list[Point], workers: int | None, address: str | None, on_result: Callable[[dict], None],
             working_dir: str | None = None, fit_cache: bool = True) -> None:
    try:
        import ray
    except ImportError:
        raise SweepError('--backend ray: ray is not installed; pip install -e ".[ray]"') from None
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if working_dir:
            kw["runtime_env"] = {"working_dir": working_dir, "excludes": ["results/", ".git/"]}
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=workers, **kw)
        started = True
    refs: dict[Any, Point] = {}
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_point)
        refs = {task.remote(p.to_dict(), 1, fit_cache): p for p in points}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                p = refs.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as err:  # a task that died (worker crash): recorded as failed
                    rec = _failed_record(p, err, traceback.format_exc())
                on_result(rec)
    except BaseException:
        for ref in list(refs):
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def run_sweep(
    plan: Plan | str | Path,
    *,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    out: str | Path | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    aggregate: bool = True,
    ray_working_dir: str | None = None,
    log: Callable[[str], None] | None = print,
) -> SweepResult:
    """Run (or resume) a sweep; write each run file atomically as it finishes; aggregate at the end."""
    t_start = time.perf_counter()
    if not isinstance(plan, Plan):
        plan = load_sweep(plan)
    if backend not in ("local", "ray"):
        raise SweepConfigError(f"--backend: expected 'local' or 'ray', got {backend!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise SweepConfigError(f"--workers: expected an integer >= 1, got {workers!r}")
    if address and backend != "ray":
        raise SweepConfigError("--address: only used with --backend ray")
    sweep_dir = sweep_dir_of(plan, out)
    log = log or (lambda s: None)
    with _Lock(sweep_dir):
        runs = sweep_dir / RUNS
        runs.mkdir(parents=True, exist_ok=True)
        for tmp in runs.glob(".*.tmp"):  # left by a process killed while writing; never a run file
            tmp.unlink(missing_ok=True)
        write_json_atomic(sweep_dir / PLAN_FILE, plan.to_dict())
        todo, n_ok, n_failed = split_done(plan, sweep_dir, retry_failed)
        n_workers = workers or (os.cpu_count() or 1)
        n_workers = max(1, min(n_workers, len(todo))) if backend == "local" else n_workers
        log(f"sweep {plan.sweep_id}: {len(plan.points)} points, {n_ok + n_failed} finished "
            f"({n_ok} ok, {n_failed} failed), {len(todo)} to run on {backend}"
            + (f" with {n_workers} worker(s)" if backend == "local" or workers else "") + f" -> {sweep_dir}")
        counts = {"ok": 0, "failed": 0}
        bar = None
        if progress and todo:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(plan.points), initial=len(plan.points) - len(todo), desc=f"sweep {plan.sweep_id}",
                       unit="run", dynamic_ncols=True)

        def on_result(rec: dict) -> None:
            write_json_atomic(run_path(sweep_dir, rec["point_id"]), rec)
            counts[rec["status"]] += 1
            if bar is not None:
                bar.set_postfix(ok=n_ok + counts["ok"], failed=n_failed + counts["failed"], refresh=False)
                bar.update(1)
            if rec["status"] == "failed":
                msg = f"run {rec['point_id']} failed: {rec['error']}"
                (bar.write if bar is not None else log)(msg)

        ordered = _submission_order(todo)
        try:
            if not ordered:
                pass
            elif backend == "ray":
                _run_ray(ordered, workers, address, on_result, ray_working_dir, plan.config.fit_cache)
            elif n_workers == 1:
                _run_serial(ordered, on_result, plan.config.fit_cache)
            else:
                _run_local(ordered, n_workers, on_result, plan.config.fit_cache)
        finally:
            if bar is not None:
                bar.close()
        result = SweepResult(sweep_dir, len(plan.points), len(plan.points) - len(todo), len(todo),
                             n_ok + counts["ok"], n_failed + counts["failed"])
        if aggregate:
            from experiments.aggregate import aggregate as agg

            result.outputs = agg(sweep_dir)
    result.wall_s = time.perf_counter() - t_start
    log(f"sweep {plan.sweep_id}: {result.ok} ok, {result.failed} failed of {result.planned}; ran {result.ran} "
        f"in {result.wall_s:.1f} s" + (f"; report: {result.outputs['report']}" if "report" in result.outputs else ""))
    return result


# ----------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m experiments.sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", required=True, help="sweep TOML file (see experiments/sweeps/ and docs/sweeps.md)")
    ap.add_argument("--backend", choices=("local", "ray"), default="local",
                    help="local process pool (default) or Ray tasks")
    ap.add_argument("--workers", type=int, default=None,
                    help="local: worker processes (default: all cores; 1 = run in this process); "
                         "ray: CPUs of the local Ray instance started when no --address is given")
    ap.add_argument("--address", default=None,
                    help="ray: address of an existing cluster (e.g. 'auto' or 'ray://head:10001'); "
                         "default: start a local Ray instance")
    ap.add_argument("--ray-working-dir", default=None,
                    help="ray: ship this folder (the repository) to the cluster's workers as their working dir")
    ap.add_argument("--out", default=None, help="parent folder of <sweep-id>/ (default: the sweep file's out_dir)")
    ap.add_argument("--retry-failed", action="store_true", help="rerun points whose recorded run failed")
    ap.add_argument("--dry-run", action="store_true", help="validate the sweep file and list its points; run nothing")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = ap.parse_args(argv)
    try:
        plan = load_sweep(args.config)
        if args.dry_run:
            sweep_dir = sweep_dir_of(plan, args.out)
            todo, n_ok, n_failed = split_done(plan, sweep_dir, args.retry_failed)
            for p in plan.points:
                print(f"{p.point_id}\tseed={p.seed}")
            print(f"sweep {plan.sweep_id}: {len(plan.points)} points ({len(plan.scenarios)} scenario(s), "
                  f"{plan.config.replicates} replicate(s)); {n_ok} ok and {n_failed} failed already in {sweep_dir}; "
                  f"{len(todo)} to run")
            return 0
        res = run_sweep(plan, backend=args.backend, workers=args.workers, address=args.address, out=args.out,
                        retry_failed=args.retry_failed, progress=not args.no_progress,
                        ray_working_dir=args.ray_working_dir)
    except SweepConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SweepLocked as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished runs are saved; run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
