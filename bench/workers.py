"""Benchmark of local workers: trials per hour of ``autosculpt search --workers N`` on one machine.

Each configuration runs the same smoke study (fixed trial count, same settings and seed)
as a user would, ``autosculpt search --preset smoke --workers N`` in a subprocess, on a
fresh database: a SQLite file, or with ``--postgres URL`` a new database on that server
(dropped afterwards). Trials per hour come from the study itself: counted trials over
the span from the first trial's start to the last one's end, so process start-up and the
final export are left out (the whole command's wall time is shown too). The speedup is
against one worker with the same threads per worker.

Threads per worker: ``1`` (OMP_NUM_THREADS=1, the default here) or ``auto``, what
``search`` does by itself: one worker trains on PyTorch's default (every core), N workers
on ``cores // N`` threads each. The baseline is trained first. Trials are long (60
epochs) so that worker start-up (imports, loading the baseline: seconds of CPU) weighs
little, and ``steady/h`` leaves the ramp-up and the tail out.

    python bench/workers.py                   # 1, 2, 4 workers, 1 thread each; 12 trials of 60 epochs
    python bench/workers.py --threads 1 auto  # and the same with search's own thread choice
    python bench/workers.py --quick           # 1 and 2 workers, 4 trials of 1 epoch
    python bench/workers.py --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from autosculpt.search.study.quota import COUNTED, is_surplus


@dataclass(frozen=True)
class Plan:
    workers: tuple[int, ...]
    trials: int
    epochs: int


FULL = Plan(workers=(1, 2, 4), trials=12, epochs=60)
QUICK = Plan(workers=(1, 2), trials=4, epochs=1)


@dataclass
class Result:
    workers: int
    threads: str
    trials: int
    failed: int
    wall_s: float
    span_s: float
    trial_s: float  # median duration of one counted trial
    measure_s: float  # median time of one latency measurement
    latency_ms: float  # median measured latency of the trials
    load: float  # 1-minute load average when the run ended
    steady: float | None  # trials/hour while every worker had a trial running (None: never)

    @property
    def per_hour(self) -> float:
        return self.trials / self.span_s * 3600


def steady_per_hour(spans: list[tuple[float, float]], workers: int) -> float | None:
    """Trials per hour finished while all ``workers`` were running trials at once.

    From the first moment ``workers`` trials run together to the last: the ramp-up
    (workers still starting: importing, loading the baseline) and the tail are left out.
    """
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running, first, last = 0, None, None
    for when, step in events:
        if running == workers and step == -1:
            last = when
        running += step
        if running == workers and first is None:
            first = when
    if first is None or last is None or last <= first:
        return None
    done = sum(first < end <= last for _, end in spans)
    return done / (last - first) * 3600


def fresh_storage(folder: Path, postgres: str | None) -> tuple[str, callable]:
    """A new, empty storage URL and a function that removes it."""
    if postgres is None:
        path = folder / f"bench-{uuid.uuid4().hex[:8]}.db"
        return f"sqlite:///{path}", lambda: path.unlink(missing_ok=True)
    import psycopg

    server = make_url(postgres)
    name = f"autosculpt_bench_{uuid.uuid4().hex[:12]}"
    admin = psycopg.connect(host=server.host, port=server.port or 5432, user=server.username,
                            password=server.password, dbname=server.database, autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()

    return server.set(database=name).render_as_string(hide_password=False), drop


def warm_baseline(epochs: int) -> None:
    """Train (or load) the smoke baseline once, so no run pays for it."""
    import torch

    from autosculpt.search.study.settings import with_preset
    from autosculpt.search.study.study import prepare

    torch.set_num_threads(1)
    settings, _ = with_preset("smoke", {"budget_ms": 50.0, "epochs": epochs})
    prepare(settings)


def run(plan: Plan, workers: int, threads: str, folder: Path, postgres: str | None) -> Result:
    """One ``autosculpt search`` with ``workers`` workers on a fresh storage."""
    url, remove = fresh_storage(folder, postgres)
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads != "auto":
        env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    env["AUTOSCULPT_ARTIFACTS"] = str(folder / "artifacts")
    command = [sys.executable, "-m", "autosculpt.search.cli", "search", "--preset", "smoke", "--budget-ms", "50",
               "--trials", str(plan.trials), "--epochs", str(plan.epochs), "--workers", str(workers),
               "--study", "bench", "--storage", url, "--out", str(folder / "out")]
    try:
        start = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=folder, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"search with {workers} workers failed:\n{done.stderr[-2000:]}")
        trials = optuna.load_study(study_name="bench", storage=url).get_trials()
    finally:
        remove()
    counted = [t for t in trials if t.state in COUNTED]
    span = max(t.datetime_complete for t in counted) - min(t.datetime_start for t in counted)
    spans = [(t.datetime_start.timestamp(), t.datetime_complete.timestamp()) for t in counted]
    return Result(
        workers=workers, threads=threads, trials=len(counted),
        failed=sum(t.state == TrialState.FAIL and not is_surplus(t) for t in trials),
        wall_s=wall, span_s=span.total_seconds(),
        trial_s=statistics.median(t.duration.total_seconds() for t in counted),
        measure_s=statistics.median(t.user_attrs["time_measure_s"] for t in counted),
        latency_ms=statistics.median(t.user_attrs["latency_ms"] for t in counted),
        load=os.getloadavg()[0],
        steady=steady_per_hour(spans, workers),
    )


def table(results: list[Result], plan: Plan, cores: int, backend: str) -> Table:
    out = Table(title=f"autosculpt search --preset smoke, {plan.trials} trials of {plan.epochs} epochs, "
                      f"{backend}, {cores} cores")
    for name in ("workers", "threads", "trials", "failed", "trials/h", "speedup", "steady/h", "steady speedup",
                 "trial s", "measure s", "latency ms", "span s", "wall s", "load"):
        out.add_column(name, justify="right")
    alone = {r.threads: r for r in results if r.workers == 1}
    for r in results:
        one = alone.get(r.threads)
        speedup = f"{r.per_hour / one.per_hour:.2f}x" if one else "-"
        steady = f"{r.steady:.0f}" if r.steady else "-"
        steady_speedup = f"{r.steady / one.steady:.2f}x" if one and one.steady and r.steady else "-"
        threads = r.threads if r.threads != "auto" else ("all" if r.workers == 1 else f"auto ({max(1, cores // r.workers)})")
        out.add_row(str(r.workers), threads, str(r.trials), str(r.failed), f"{r.per_hour:.0f}", speedup, steady,
                    steady_speedup, f"{r.trial_s:.1f}", f"{r.measure_s:.2f}", f"{r.latency_ms:.3f}", f"{r.span_s:.0f}",
                    f"{r.wall_s:.0f}", f"{r.load:.1f}")
    return out


LEGEND = """\
trials/h: counted trials over the span from the first trial's start to the last one's end;
steady/h: trials finished while every worker had a trial running (no ramp-up, no tail);
speedup: against 1 worker with the same threads; trial s, measure s, latency ms: medians
over the counted trials (duration, latency measurement time, measured latency); wall s:
the whole command (start-up, study creation, export); load: 1-minute load average after."""

NOTE = """\
Where it stops scaling: every worker trains on the CPU and measures each candidate in a
separate process pinned to one core (the same, last core for every worker), so from
workers = cores on, workers only share the cores: a trial lasts longer (trial s) and
trials/hour flattens, and concurrent measurements queue on that one core (measure s).
The measured latency itself (CPU time of the computing thread at 1 thread) should stay
put; if it drifts with the worker count, the workers are disturbing the measurement.
With 'auto' one worker alone trains on every core: on a busy machine its threads spin
against other processes, so the speedup of several workers there mostly measures that."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 and 2 workers, 4 trials of 1 epoch")
    parser.add_argument("--postgres", metavar="URL", help="PostgreSQL server URL: a fresh database per run (default SQLite)")
    parser.add_argument("--trials", type=int, help="trials per run (default 12, quick 4)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs per trial (default 60, quick 1)")
    parser.add_argument("--threads", nargs="+", default=["1"], metavar="auto|N",
                        help="threads per worker, one run of every worker count each (default 1)")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    plan = Plan(plan.workers, args.trials or plan.trials, args.epochs or plan.epochs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    console = Console(width=max(Console().width, 160))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    console.print(f"load average before: {os.getloadavg()[0]:.1f} on {cores} cores; training the baseline if needed")
    warm_baseline(plan.epochs)
    results = []
    with tempfile.TemporaryDirectory(prefix="autosculpt-bench-workers-") as folder:
        for threads in args.threads:
            for workers in plan.workers:
                result = run(plan, workers, threads, Path(folder), args.postgres)
                console.print(f"{workers} worker(s), threads {threads}: {result.per_hour:.0f} trials/hour "
                              f"({result.trials} trials in {result.span_s:.0f} s)")
                results.append(result)
    backend = "PostgreSQL" if args.postgres else "SQLite"
    console.print(table(results, plan, cores, backend))
    print(LEGEND)
    print(NOTE)


if __name__ == "__main__":
    main()
