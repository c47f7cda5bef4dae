"""Peers: our default search against simpler ways of spending the same trials.

Every arm gets the same trial count, fine-tuning schedule (epochs, distillation from the
same cached baseline), data, latency harness and budget; a candidate over the budget is
rejected before training in every arm. Arms:

(a) uniform   - one keep ratio for every layer, a geometric grid over the ``uniform``
                space's range 1 .. 0.02 (the warm start enqueues exactly that grid);
(b) random    - Optuna's RandomSampler over our per-layer space (with our warm start);
(c) ours      - our default: multivariate TPE over the per-layer space (with our warm start);
(d) NNI 3.0   - L1NormPruner + ModelSpeedup at the same uniform ratios as (a), run in a
                separate venv (``$NNI_PYTHON``, default /tmp/nni-venv/bin/python); "not
                installed" when that interpreter or nni is missing. NNI cannot prune
                ConvTranspose2d, so the up-convolutions stay whole there.

For each arm: the best validation Dice within 3 budgets (the study's and 1/2, 1/4 of it,
read from the same study with :func:`best_feasible`), and the hypervolume of its (Dice,
latency) front of fine-tuned trials within the study's budget, with reference point
(Dice 0, the baseline's latency), divided by that latency (1 = Dice 1 at 0 ms).

    python bench/peers.py                                      # unet, 12 trials per arm
    python bench/peers.py --image-size 64 --patients 16 --budget-ms 2 --trials 10
    python bench/peers.py --quick                              # unet-tiny, smoke data, 3 trials x 1 epoch per arm
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from _common import front, hypervolume, make_settings, run_study, scaling_row, scaling_table, tuned  # noqa: E402
from autosculpt.search.latency import Target, measure  # noqa: E402
from autosculpt.search.runner import make_sampler  # noqa: E402
from autosculpt.search.study import best_feasible, prepare  # noqa: E402
from autosculpt.space import SearchSpace  # noqa: E402

NNI_PYTHON = os.environ.get("NNI_PYTHON", "/tmp/nni-venv/bin/python")
NNI_WORKER = Path(__file__).with_name("_nni_worker.py")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", help="Optuna storage URL (default sqlite:///studies/bench.db; a temp file with --quick)")
    parser.add_argument("--prefix", help="study name prefix (default peers-<model>-<budget>ms)")
    parser.add_argument("--model", default=None, help="model preset (default unet; unet-tiny with --quick)")
    parser.add_argument("--trials", type=int, help="trials per arm (default 12; 3 with --quick)")
    parser.add_argument("--budget-ms", type=float, help="the studies' latency budget (default 4; 5 with --quick)")
    parser.add_argument("--image-size", type=int, help="input size (default 96; 32 with --quick)")
    parser.add_argument("--patients", type=int, help="generated patients (default 60; 8 with --quick)")
    parser.add_argument("--epochs", type=int, help="fine-tune epochs per trial (default: the Settings default; 1 with --quick)")
    parser.add_argument("--arms", default="uniform,random,ours,nni", help="comma-separated subset of the arms")
    parser.add_argument("--report", action="store_true", help="run no trials: report the stored studies as they are")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: unet-tiny, smoke data, 3 trials per arm")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    console = Console(width=160)
    quick = args.quick
    common = {"model": args.model or ("unet-tiny" if quick else "unet"), "budget_ms": args.budget_ms or (5.0 if quick else 4.0),
              "trials": args.trials or (3 if quick else 12), "preset": "smoke" if quick else "default",
              "image_size": args.image_size, "patients": args.patients, "epochs": args.epochs or (1 if quick else None)}
    if quick:
        common["target"] = Target(min_runs=10, max_seconds=0.2, warmup=2).to_dict()
    url = args.storage or os.environ.get("AUTOSCULPT_BENCH_STORAGE") or (
        f"sqlite:///{tempfile.mkdtemp(prefix='peers-quick-')}/studies.db" if quick else "sqlite:///studies/bench.db")
    trials = common["trials"]
    warm = 1 if quick else 4
    arms = {
        "uniform": dict(space="uniform", warm_start=trials, sampler=make_sampler),
        "random": dict(space="per-layer", warm_start=warm, sampler=lambda seed: optuna.samplers.RandomSampler(seed=seed)),
        "ours": dict(space="per-layer", warm_start=warm, sampler=make_sampler),
    }
    chosen = args.arms.split(",")
    prefix = args.prefix or f"peers-{common['model']}-{common['budget_ms']:g}ms" + (
        f"-{common['image_size']}px" if common["image_size"] else "") + (f"-{common['patients']}p" if common["patients"] else "")
    console.print(f"peers on {url}: {common['model']}, budget {common['budget_ms']:g} ms, {trials} trials per arm")
    studies, context = {}, None
    for arm, spec in arms.items():
        if arm not in chosen:
            continue
        settings = make_settings(**common, space=spec["space"], warm_start=spec["warm_start"])
        study, context, seconds = run_study(f"{prefix}-{arm}" + ("-quick" if quick else ""), url, settings,
                                            sampler=spec["sampler"], context=context, run=not args.report)
        console.print(f"  arm {arm}: {len(study.trials)} trials, {seconds:.0f} s in this call")
        studies[arm] = study
    if context is None:  # the NNI arm alone: it needs the data and baseline a study arm would prepare
        context = prepare(make_settings(**common, space="uniform"))
    nni_rows = run_nni(context, trials) if "nni" in chosen else None
    budget = common["budget_ms"]
    reference = (next(iter(studies.values())).user_attrs["baseline"]["latency"]["median_ms"] if studies
                 else measure(context.baseline.model, tuple(context.example.shape), context.target).median_ms)
    console.print(peers_table(studies, nni_rows, budget, reference, context.baseline.val.mean, trials))
    console.print(scaling_table([scaling_row(arm, s) for arm, s in studies.items()], "Where the trials' time went, per arm"))
    console.print(f"time taken: {time.perf_counter() - started:.0f} s; the machine was shared with other jobs, "
                  f"so absolute times are inflated (latency is thread CPU time at 1 thread, far less affected)")
    return 0


def nni_keeps(context, trials: int) -> list[float]:
    """The same uniform ratios as arm (a): the uniform space's warm-start grid."""
    space = SearchSpace.load("uniform")
    return [next(iter(p.values())) for p in space.uniform_recipes(trials, context.groups)]


def run_nni(context, trials: int) -> list[dict] | str:
    """Rows of the NNI arm from its venv, or why there are none."""
    if not Path(NNI_PYTHON).exists():
        return "not installed"
    probe = subprocess.run([NNI_PYTHON, "-c", "import nni, autosculpt"], capture_output=True, text=True)
    if probe.returncode:
        return "not installed"
    s = context.settings
    job = {"model": s.model, "image_size": s.image_size, "patients": s.patients, "seed": s.seed,
           "state_path": str(context.baseline.state_path), "keeps": nni_keeps(context, trials), "epochs": s.epochs,
           "distill": s.distill, "budget_ms": s.budget_ms, "target": s.target}
    done = subprocess.run([NNI_PYTHON, str(NNI_WORKER)], input=json.dumps(job), capture_output=True, text=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        return f"failed: {tail[0][:80]}" if not rows else rows
    return rows


def peers_table(studies, nni_rows, budget, reference, base_dice, trials) -> Table:
    budgets = (budget / 4, budget / 2, budget)
    table = Table(title=f"Same {trials} trials, schedule and budget per arm: best val Dice within each budget "
                        f"(baseline Dice {base_dice:.3f}, {reference:.2f} ms); hypervolume ref (Dice 0, {reference:.2f} ms)")
    table.add_column("arm")
    for b in budgets:
        table.add_column(f"Dice ≤{b:g} ms", justify="right")
    for column in ("hypervolume", "front size", "fine-tuned", "rejected"):
        table.add_column(column, justify="right")
    names = {"uniform": "(a) uniform grid", "random": "(b) random, per-layer", "ours": "(c) ours: TPE, per-layer"}
    for arm, study in studies.items():
        points = [(t.values[0], t.user_attrs["latency_ms"]) for t in tuned(study)]
        cells = []
        for b in budgets:
            best = best_feasible(study, b)
            cells.append("—" if best is None else f"{best.values[0]:.3f} ({best.user_attrs['param_ratio']:.0f}x)")
        rejected = sum(1 for t in study.trials if t.user_attrs.get("finetuned") is False)
        table.add_row(names[arm], *cells, f"{hypervolume(points, reference):.4f}", str(len(front(tuned(study), budget))),
                      str(len(points)), str(rejected))
    if nni_rows is None:
        return table
    if isinstance(nni_rows, str):
        table.add_row("(d) NNI 3.0 L1Norm", nni_rows, *[""] * (len(budgets) + 3))
        return table
    tuned_rows = [r for r in nni_rows if r["feasible"]]
    cells = []
    for b in budgets:
        within = [r for r in tuned_rows if r["latency_ms"] <= b]
        best = max(within, key=lambda r: r["dice"], default=None)
        cells.append("—" if best is None else f"{best['dice']:.3f} ({best['param_ratio']:.0f}x)")
    points = [(r["dice"], r["latency_ms"]) for r in tuned_rows]
    dominated = sum(1 for r in tuned_rows if any(o["dice"] >= r["dice"] and o["latency_ms"] < r["latency_ms"] for o in tuned_rows))
    table.add_row("(d) NNI 3.0 L1Norm, uniform", *cells, f"{hypervolume(points, reference):.4f}",
                  str(len(tuned_rows) - dominated), str(len(tuned_rows)), str(len(nni_rows) - len(tuned_rows)))
    return table


if __name__ == "__main__":
    sys.exit(main())
