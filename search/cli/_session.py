"""What ``search``, ``resume`` and ``worker`` share: running workers, then exporting and reporting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console

from ..runner import run_worker
from ..storage import masked
from ..study import Context, best_feasible, open_existing

console = Console(stderr=True, highlight=False)


def run_workers(name: str, url: str, context: Context, workers: int, storage_flag: str) -> None:
    """Run ``workers`` workers on study ``name``: this process plus ``workers - 1`` subprocesses.

    The workers share this machine's cores: each trains on ``cores // workers`` threads
    (at least one) unless OMP_NUM_THREADS is set. Ctrl-C stops every worker; Optuna
    marks each running trial failed, the heartbeat retries it on resume, and the resume
    command is printed before exit 130. Whatever else stops this process (a storage
    that stays down) stops the other workers too: none is left running unseen.
    """
    threads = _threads_per_worker(workers)
    others = [_spawn_worker(name, url, index, threads) for index in range(1, workers)]
    try:
        study, _ = open_existing(name, url)
        run_worker(study, context, url, worker_index=0)
    except BaseException as error:
        for process in others:
            process.terminate()
        for process in others:
            process.wait()
        if isinstance(error, KeyboardInterrupt):
            console.print(f"stopped; the running trial was marked failed. Resume with: autosculpt resume {name}{storage_flag}")
        raise
    for process in others:
        process.wait()


def _threads_per_worker(workers: int) -> int | None:
    """Threads each local worker trains on, None to leave PyTorch's default (one worker, or
    OMP_NUM_THREADS set). Workers that each took every core would spin against each other."""
    if workers < 2 or os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // workers)
    torch.set_num_threads(threads)
    return threads


def _spawn_worker(name: str, url: str, index: int, threads: int | None) -> subprocess.Popen:
    """A background ``autosculpt worker`` on the same study; the URL travels in the environment."""
    env = {**os.environ, "AUTOSCULPT_STORAGE": url}
    if threads is not None:
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    command = [sys.executable, "-m", "autosculpt.search.cli", "worker", name, "--index", str(index), "--quiet"]
    return subprocess.Popen(command, env=env)


def finish_study(name: str, url: str, out: str | None) -> int:
    """Export the best feasible trial and write the report into ``out`` (default exports/NAME)."""
    from ..export import export_trial, no_feasible_message
    from ...reports import write_report

    study, settings = open_existing(name, url)
    folder = Path(out or Path("exports") / name)
    best = best_feasible(study)
    if best is None:
        console.print(no_feasible_message(study, settings.budget_ms))
        report = write_report(study, folder / "report.html")
        console.print(f"report: {report}")
        return 1
    exported = export_trial(study, best, folder, url)
    report = write_report(study, folder / "report.html", samples=exported.samples)
    console.print(f"exported trial {best.number} to {folder} (storage {masked(url)}); report: {report}")
    return 0
