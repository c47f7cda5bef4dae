"""Peers: our default search against other ways of spending the same trials, at the budget.

Every arm gets the same trial count, fine-tuning schedule, data, cached baseline, latency
harness (the study's reference network) and budget, given as a speedup over the dense
model (``--speedup``), so the same table means the same on every CPU. A run's first arm
measures the dense model and resolves the speedup into milliseconds; the run's other arms
take that budget in milliseconds, so no arm gains from a noisier measurement of the
dense model. Arms:

(a) uniform        - the uniform shape projected onto the budget: the widest network with
                     one keep ratio everywhere, fine-tuned once (its trials would repeat it);
(b) random         - Optuna's RandomSampler over the search's space, with our warm start;
(c) ours           - our default: multivariate TPE over the search's space, warm start;
(d) ours, no warm  - (c) without the warm start's shapes;
(e) NNI 3.0        - L1NormPruner + ModelSpeedup at uniform ratios bracketing the budget,
                     measured with the same reference, in a separate venv (``$NNI_PYTHON``,
                     default /tmp/nni-venv/bin/python); "not installed" when that
                     interpreter or nni is missing. NNI cannot prune ConvTranspose2d.

Each run (``--runs``: speedup x seed) prints every arm's best validation Dice within the
budget; the last column is the mean and the spread (max - min) over the seeds of the first
speedup. Then each arm's study is finished as ``autosculpt search`` finishes one (its
finalists polished, the winner exported into ``--out``/STUDY and re-measured), and a second
table gives the figure that counts: the exported model's test Dice against the baseline's,
and whether it met the budget (``--no-final`` skips this). A run's seed picks the generated data, the baseline trained on them and the
samplers' seeds: at 30x, which baseline is pruned mattered more than the sampler (the
README's peers section), so the spread covers both.

    python bench/peers.py                                       # unet, 96 px: 30x (3 seeds), 10x, 100x
    python bench/peers.py --runs 30:0 --arms ours,random        # one part; the studies resume
    python bench/peers.py --model unet-paper --image-size 64 --space bench/paper-space.toml \
        --epochs 20 --trials 40 --warm-start 3 --runs 90:0 --arms uniform,random,cold   # bench/paper.py's settings
    python bench/peers.py --runs 30:0,30:1,30:2 --trials 12 --arms uniform,random,ours,cold   # polished test Dice, 3 seeds
    python bench/peers.py --quick                               # unet-tiny, smoke data, 3 trials per arm
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
from _common import add_study_options, card_result, make_settings, run_study, scaling_row, scaling_table  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from autosculpt.search.cli._session import finish_study  # noqa: E402
from autosculpt.search.study.best import best_feasible  # noqa: E402
from autosculpt.search.study.runner import make_sampler  # noqa: E402
from autosculpt.search.study.storage import open_storage  # noqa: E402
from autosculpt.search.study.study import budget_fraction, study_reference  # noqa: E402
from autosculpt.space import SearchSpace  # noqa: E402

NNI_PYTHON = os.environ.get("NNI_PYTHON", "/tmp/nni-venv/bin/python")
NNI_WORKER = Path(__file__).with_name("_nni_worker.py")
SEED_STRIDE = 7919  # sampler seeds of different runs lie this far apart
NAMES = {"uniform": "(a) uniform at the budget", "random": "(b) random", "ours": "(c) ours: TPE",
         "cold": "(d) ours without warm start", "nni": "(e) NNI 3.0 L1Norm, uniform"}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_options(parser, image_size="96; 32 with --quick", epochs="12; 1 with --quick")
    parser.add_argument("--prefix", help="study name prefix (default peers-<model>-<size>px)")
    parser.add_argument("--model", default=None, help="model preset (default unet; unet-tiny with --quick)")
    parser.add_argument("--trials", type=int, help="trials per arm and run (default 30; 3 with --quick)")
    parser.add_argument("--runs", help="SPEEDUP:SEED,... (default 30:0,30:1,30:2,10:0,100:0; 1:0 with --quick: a tiny net has little to remove)")
    parser.add_argument("--space", default="auto", help="space of arms (b)-(d): a preset or .toml file (default auto, "
                        "as autosculpt search: width, and depth where width alone cannot reach the budget)")
    parser.add_argument("--warm-start", type=int, help="warm-start shapes of arms (b) and (c) (default 4; 1 with --quick)")
    parser.add_argument("--arms", default="uniform,random,ours,cold,nni", help="comma-separated subset of the arms")
    parser.add_argument("--no-final", action="store_true", help="skip polishing and exporting each arm's winner")
    parser.add_argument("--out", type=Path, help="where the winners are exported, one folder per study (default exports/)")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: unet-tiny, smoke data, 3 trials per arm")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    console = Console(width=180)
    quick = args.quick
    common = {"model": args.model or ("unet-tiny" if quick else "unet"), "preset": "smoke" if quick else "default",
              "image_size": args.image_size or (None if quick else 96), "patients": args.patients,
              "epochs": args.epochs or (1 if quick else 12)}
    url = args.storage or os.environ.get("AUTOSCULPT_BENCH_STORAGE") or (
        f"sqlite:///{tempfile.mkdtemp(prefix='peers-quick-')}/studies.db" if quick else "sqlite:///studies/bench.db")
    trials = args.trials or (3 if quick else 30)
    runs = [tuple(float(x) for x in run.split(":")) for run in (args.runs or ("1:0" if quick else "30:0,30:1,30:2,10:0,100:0")).split(",")]
    warm = args.warm_start or (1 if quick else 4)
    arms = {
        "uniform": dict(space="uniform", warm_start=1, trials=1, sampler=make_sampler),
        "random": dict(space=args.space, warm_start=warm, trials=trials, sampler=optuna.samplers.RandomSampler),
        "ours": dict(space=args.space, warm_start=warm, trials=trials, sampler=make_sampler),
        "cold": dict(space=args.space, warm_start=0, trials=trials, sampler=make_sampler),
    }
    chosen = args.arms.split(",")
    prefix = args.prefix or f"peers-{common['model']}" + (f"-{common['image_size']}px" if common["image_size"] else "")
    console.print(f"peers on {url}: {common['model']}, {trials} trials per arm, runs {args.runs or 'default'}")
    results: dict[str, dict] = {arm: {} for arm in NAMES if arm in chosen}
    finals: dict[str, dict] = {arm: {} for arm in arms if arm in chosen}
    out = args.out or (Path(url.removeprefix("sqlite:///")).parent / "exports" if quick else Path("exports"))
    studies, baselines, context = {}, {}, None
    for speedup, seed in runs:
        run_name = f"{speedup:g}x-s{seed:g}"
        budget_ms = None  # set by the run's first study: every arm of a run gets the same budget in ms
        for arm, spec in arms.items():
            if arm not in chosen:
                continue
            settings = make_settings(**common, seed=int(seed), budget_ms=budget_ms, speedup=None if budget_ms else speedup,
                                     space=spec["space"], warm_start=spec["warm_start"], trials=spec["trials"])
            sampler = _seeded(spec["sampler"], int(seed))
            study, context, seconds = run_study(f"{prefix}-{run_name}-{arm}" + ("-quick" if quick else ""), url, settings,
                                                sampler=sampler, context=context, run=not args.report)
            console.print(f"  {run_name} arm {arm}: {len(study.trials)} trials, {seconds:.0f} s in this call")
            results[arm][run_name] = study
            studies[f"{run_name} {arm}"] = study
            budget_ms = budget_ms or study.user_attrs["settings"]["budget_ms"]
            if not args.no_final:
                finals[arm][run_name] = final(study.study_name, url, out / study.study_name, run=not args.report)
        if context is not None:
            baselines[run_name] = context.baseline.val.mean
        if "nni" in chosen and context is not None:
            results["nni"][run_name] = nni_study(f"{prefix}-{run_name}-nni" + ("-quick" if quick else ""), url, study,
                                                 context, trials, budget_ms, run=not args.report)
    console.print(peers_table(results, [f"{s:g}x-s{d:g}" for s, d in runs], baselines, trials))
    if not args.no_final:
        console.print(finals_table(finals, [f"{s:g}x-s{d:g}" for s, d in runs]))
    console.print(scaling_table([scaling_row(label, s) for label, s in studies.items()], "Where the trials' time went"))
    console.print(f"time taken: {time.perf_counter() - started:.0f} s")
    return 0


def _seeded(sampler, seed: int):
    """A sampler factory whose seeds are shifted by the run's sampler seed."""
    return lambda worker_seed: sampler(seed=worker_seed + SEED_STRIDE * seed)


def final(name: str, url: str, folder: Path, run: bool) -> dict | None:
    """Study ``name`` finished as ``autosculpt search`` finishes it, its winner exported into
    ``folder`` (only read back unless ``run``): the exported model's figures, None when no
    trial was within the budget (:func:`card_result`)."""
    if run:
        finish_study(name, url, str(folder))
    return card_result(folder / "model.json")


def finals_table(finals: dict[str, dict], runs: list[str]) -> Table:
    """One row per arm: its exported winner's test Dice, change against the baseline's test
    Dice and re-measured median against the budget, per run; the first speedup's mean change
    and spread over its seeds."""
    def cell(result: dict | None) -> tuple[str, float | None]:
        if result is None:
            return "none", None
        change, over = -result["dice_loss_pct"], "" if result["within_budget"] else ", over"
        return f"{result['test_dice']:.3f} ({change:+.1f} %), {result['median_ms']:.2f}/{result['budget_ms']:.2f} ms{over}", change

    return arms_table("The exported winner: test Dice (change against the baseline's), median for the budget", finals, runs,
                      cell, "mean change (spread)", lambda mean, spread: f"{mean:+.1f} % ({spread:.1f})")


def nni_keeps(context, trials: int, budget_ms: float, baseline_ms: float) -> list[float]:
    """Uniform ratios a person would sweep: ``trials`` of them bracketing the budget."""
    around = budget_fraction(budget_ms, baseline_ms)
    return [next(iter(p.values())) for p in SearchSpace.load("uniform").uniform_recipes(trials, context.groups, around)]


def nni_study(name: str, url: str, peer: optuna.Study, context, trials: int, budget_ms: float,
              run: bool) -> optuna.Study | str:
    """The NNI arm as a study of ``trials`` finished trials (one per uniform ratio), or why there is none.

    Runs NNI in its venv unless the study already holds the trials (or ``run`` is False),
    measuring with ``peer``'s latency reference, and stores each ratio as a trial with the
    same value and attributes as ours, so every arm is read the same way.
    """
    storage = open_storage(url)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True)
    if len(study.trials) >= trials or not run:
        return study if study.trials else "not run"
    study.set_user_attr("settings", {**peer.user_attrs["settings"], "budget_ms": budget_ms})
    rows = run_nni(context, peer, trials, budget_ms)
    if isinstance(rows, str):
        return rows
    for row in rows:
        attrs = {"finetuned": row["feasible"], "latency_ms": row["latency_ms"], "latency_p90_ms": row["latency_p90_ms"],
                 "param_ratio": row["param_ratio"], "mac_ratio": row["mac_ratio"], "params": row["params"], "keep": row["keep"]}
        study.add_trial(optuna.trial.create_trial(value=row["dice"], user_attrs=attrs))
    return study


def run_nni(context, peer: optuna.Study, trials: int, budget_ms: float) -> list[dict] | str:
    """Rows of the NNI arm from its venv, or why there are none."""
    if not Path(NNI_PYTHON).exists():
        return "not installed"
    probe = subprocess.run([NNI_PYTHON, "-c", "import nni, autosculpt"], capture_output=True, text=True)
    if probe.returncode:
        return "not installed"
    s = context.settings
    baseline_ms = peer.user_attrs["baseline"]["latency"]["median_ms"]
    reference = study_reference(peer, context)
    with tempfile.TemporaryDirectory() as folder:
        job = {"model": s.model, "image_size": s.image_size, "patients": s.patients, "seed": s.seed,
               "state_path": str(context.baseline.state_path), "keeps": nni_keeps(context, trials, budget_ms, baseline_ms),
               "epochs": s.epochs, "distill": s.distill, "budget_ms": budget_ms, "target": s.target}
        if reference is not None:
            job["reference_onnx"], job["reference_ms"] = str(Path(folder) / "reference.onnx"), reference.median_ms
            Path(job["reference_onnx"]).write_bytes(reference.onnx)
        done = subprocess.run([NNI_PYTHON, str(NNI_WORKER)], input=json.dumps(job), capture_output=True, text=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        return f"failed: {tail[0][:80]}"
    return rows


def peers_table(results: dict[str, dict], runs: list[str], baselines: dict[str, float], trials: int) -> Table:
    """One row per arm: the best val Dice within the budget of each run, and the first
    speedup's mean and spread over its seeds; a first row holds each run's baseline
    (val Dice of the dense model). A cell holds why an arm has no study."""
    def cell(study: optuna.Study | str | None) -> tuple[str, float | None]:
        if study is None or isinstance(study, str):
            return study or "—", None
        best = best_feasible(study)
        if best is None:
            return "none", 0.0
        return f"{best.values[0]:.3f} ({best.user_attrs['param_ratio']:.0f}x)", best.values[0]

    baseline = ["dense baseline", *(f"{baselines[run]:.3f}" if run in baselines else "—" for run in runs), ""]
    return arms_table(f"Best val Dice within the budget, {trials} trials per arm; runs are speedup-seed; one fine-tune "
                      "schedule for all", results, runs, cell, "mean (spread)",
                      lambda mean, spread: f"{mean:.3f} ({spread:.3f})", first_row=baseline)


def arms_table(title: str, results: dict[str, dict], runs: list[str], cell: Callable, summary: str,
               write_summary: Callable[[float, float], str], first_row: list[str] | None = None) -> Table:
    """A table of one row per arm of ``results`` ({arm: {run: entry}}) and a column per run,
    after ``first_row``; the last column, ``summary``, holds ``write_summary(mean, spread)`` of
    the numbers the cells of the first speedup's seeds gave. ``cell(entry)`` is a cell's text
    and its number (None: not counted); a run the arm lacks reads "—"."""
    first = runs[0].split("-")[0]
    table = Table(title=title)
    table.add_column("arm")
    for run in runs:
        table.add_column(run, justify="right")
    table.add_column(f"{first} {summary}", justify="right")
    if first_row:
        table.add_row(*first_row)
    for arm, by_run in results.items():
        cells = [cell(by_run[run]) if run in by_run else ("—", None) for run in runs]
        numbers = [n for run, (_, n) in zip(runs, cells) if run.startswith(first + "-") and n is not None]
        table.add_row(NAMES[arm], *(text for text, _ in cells),
                      write_summary(statistics.mean(numbers), max(numbers) - min(numbers)) if numbers else "")
    return table


if __name__ == "__main__":
    sys.exit(main())
