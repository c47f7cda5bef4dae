"""What ``search``, ``resume`` and ``worker`` share: running workers, then exporting and reporting."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..study.best import UNSETTLED_LOSS, answer, finalist_count, finalists
from ..study.runner import run_worker
from ..study.storage import masked
from ..study.study import Context, open_existing, prepare_study

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
    """Polish the finalists (the best few trials within budget), export the winner with its
    verdict and write the report into ``out`` (default exports/NAME).

    Returns the exit status: 0 when the model meets the budget and the allowed Dice loss,
    EXIT_VERDICT_FAILED when it was written but misses either, 1 when nothing was within
    budget. Finalists this study polished already are not polished again.
    """
    from ...reports import write_report
    from ..deploy.export import export_trial, no_feasible_message, trial_network
    from ..deploy.verdict import EXIT_VERDICT_FAILED

    study, settings = open_existing(name, url)
    folder = Path(out or Path("exports") / name)
    count = finalist_count(study, settings)
    if count > 1 and settings.finalists is None:
        console.print(f"the best trial within budget scores over {UNSETTLED_LOSS:.0%} below the baseline's val Dice: short "
                      f"fine-tunes have not settled, so the {count} best are polished (--finalists 1 polishes one)")
    best = finalists(study, count)
    if not best:
        console.print(no_feasible_message(study, settings.budget_ms))
        report = write_report(study, folder / "report.html")
        console.print(f"report: {report}")
        return 1
    context = prepare_study(study, url, replace(settings, distill=0.0))
    if settings.polish:
        _polish(study, best, lambda trial: trial_network(trial, context, url), replace(context, settings=settings), url)
    winner = answer(study)
    exported = export_trial(study, winner, folder, url, context=context)
    report = write_report(study, folder / "report.html", samples=exported.samples)
    console.print(f"exported trial {winner.number} to {folder} (deploy {exported.card['deploy']}; storage {masked(url)}); "
                  f"report: {report}")
    verdict = exported.verdict
    console.print(verdict.line(), style=None if verdict.ok else "bold red", soft_wrap=True)
    return 0 if verdict.ok else EXIT_VERDICT_FAILED


def _polish(study, trials, network, context: Context, url: str) -> None:
    """The finalists' polish with a progress bar per finalist and variant; one line per finalist and the winner."""
    from ..study.polish import polish_finalists

    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} epochs"),
               TextColumn("val Dice {task.fields[dice]:.3f}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        tasks = {}

        def on_epoch(number: int, variant: str, epoch: int, epochs: int, dice: float) -> None:
            if (number, variant) not in tasks:
                tasks[number, variant] = progress.add_task(f"polishing trial {number} ({variant})", total=epochs, dice=0.0)
            progress.update(tasks[number, variant], completed=epoch, dice=dice)

        record = polish_finalists(study, trials, network, context, url, on_epoch=on_epoch)
    for candidate in record["candidates"]:
        console.print(f"polish of trial {candidate['trial']}: val Dice {candidate['dice_before']:.3f} -> "
                      f"{candidate['dice_after']:.3f} (kept: {candidate['kept']}, {candidate['epochs']} epochs, "
                      f"{candidate['time_s']:.0f} s)")
    rho = record["rank_correlation"]
    ranking = "" if rho is None else f"; trial scores against polished Dice: Spearman {rho:+.2f}"
    count = len(record["candidates"])
    console.print(f"winner: trial {record['trial']}, val Dice {record['dice_after']:.3f} after its polish "
                  f"({count} finalist{'s' if count > 1 else ''}{ranking})")
