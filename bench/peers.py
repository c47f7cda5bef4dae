"""Peers: our default search against simpler ways of spending the same trials.

Every arm gets the same trial count, fine-tuning schedule (epochs, distillation from the
same cached baseline), data, latency harness and budget; a candidate over the budget is
rejected before training in every arm. Arms:

(a) uniform   - one keep ratio for every layer, swept as a person would: a geometric grid
                of ``--trials`` ratios bracketing the budget (the ``uniform`` space's warm
                start with that many points);
(b) random    - Optuna's RandomSampler over a per-layer space (``--space``, default
                ``bench/paper-space.toml``: keep 0.02..1 on a log scale) with our warm start
                (3 uniform candidates and their capped twins);
(c) ours      - our default sampler, multivariate TPE, over the same space and warm start;
(d) NNI 3.0   - L1NormPruner + ModelSpeedup at the same uniform ratios as (a), run in a
                separate venv (``$NNI_PYTHON``, default /tmp/nni-venv/bin/python); "not
                installed" when that interpreter or nni is missing. NNI cannot prune
                ConvTranspose2d, so the up-convolutions stay whole there.

For each arm: the best validation Dice within 3 budgets (the study's and 1/2, 1/4 of it,
read from the same study with :func:`best_feasible`), and the hypervolume of its (Dice,
latency) front of fine-tuned trials within the study's budget, with reference point
(Dice 0, the baseline's latency), divided by that latency (1 = Dice 1 at 0 ms).

    python bench/peers.py                      # unet-paper, 64x64, 1 ms, 30 trials x 20 epochs per arm
    python bench/peers.py --arms uniform,nni & python bench/peers.py --arms random,ours   # two at a time
    python bench/peers.py --model unet --image-size 96 --budget-ms 2 --epochs 6 --space per-layer
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

from _common import add_study_options, front, hypervolume, make_settings, run_study, scaling_row, scaling_table, tuned  # noqa: E402
from autosculpt.search.latency import Target, measure  # noqa: E402
from autosculpt.search.storage import open_storage  # noqa: E402
from autosculpt.search.runner import make_sampler  # noqa: E402
from autosculpt.search.study import best_feasible, budget_fraction, prepare  # noqa: E402
from autosculpt.space import SearchSpace  # noqa: E402

NNI_PYTHON = os.environ.get("NNI_PYTHON", "/tmp/nni-venv/bin/python")
NNI_WORKER = Path(__file__).with_name("_nni_worker.py")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_study_options(parser)
    parser.add_argument("--prefix", help="study name prefix (default peers-<model>-<budget>ms-<size>px)")
    parser.add_argument("--model", default=None, help="model preset (default unet-paper; unet-tiny with --quick)")
    parser.add_argument("--trials", type=int, help="trials per arm (default 30; 3 with --quick)")
    parser.add_argument("--space", default=str(Path(__file__).with_name("paper-space.toml")),
                        help="space of arms (b) and (c): a preset name or .toml file (default bench/paper-space.toml)")
    parser.add_argument("--arms", default="uniform,random,ours,nni", help="comma-separated subset of the arms")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: unet-tiny, smoke data, 3 trials per arm")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    console = Console(width=160)
    quick = args.quick
    common = {"model": args.model or ("unet-tiny" if quick else "unet-paper"), "budget_ms": args.budget_ms or (5.0 if quick else 1.0),
              "trials": args.trials or (3 if quick else 30), "preset": "smoke" if quick else "default",
              "image_size": args.image_size or (None if quick else 64), "patients": args.patients,
              "epochs": args.epochs or (1 if quick else 20)}
    if quick:
        common["target"] = Target(min_runs=10, max_seconds=0.2, warmup=2).to_dict()
    url = args.storage or os.environ.get("AUTOSCULPT_BENCH_STORAGE") or (
        f"sqlite:///{tempfile.mkdtemp(prefix='peers-quick-')}/studies.db" if quick else "sqlite:///studies/bench.db")
    trials = common["trials"]
    warm = 1 if quick else 3
    arms = {
        "uniform": dict(space="uniform", warm_start=trials, sampler=make_sampler),
        "random": dict(space=args.space, warm_start=warm, sampler=lambda seed: optuna.samplers.RandomSampler(seed=seed)),
        "ours": dict(space=args.space, warm_start=warm, sampler=make_sampler),
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
    reference = (next(iter(studies.values())).user_attrs["baseline"]["latency"]["median_ms"] if studies
                 else measure(context.baseline.model, tuple(context.example.shape), context.target).median_ms)
    nni = nni_study(f"{prefix}-nni" + ("-quick" if quick else ""), url, context, trials, reference, run=not args.report) \
        if "nni" in chosen else None
    console.print(peers_table({**studies, "nni": nni} if nni is not None else studies, common["budget_ms"], reference,
                              context.baseline.val.mean, trials))
    console.print(scaling_table([scaling_row(arm, s) for arm, s in studies.items()], "Where the trials' time went, per arm"))
    console.print(f"time taken: {time.perf_counter() - started:.0f} s; the machine was shared with other jobs, "
                  f"so absolute times are inflated (latency is thread CPU time at 1 thread, far less affected)")
    return 0


def nni_keeps(context, trials: int, baseline_ms: float) -> list[float]:
    """The same uniform ratios as arm (a): the uniform space's warm start around the budget."""
    around = budget_fraction(context.settings.budget_ms, baseline_ms)
    return [next(iter(p.values())) for p in SearchSpace.load("uniform").uniform_recipes(trials, context.groups, around)]


def nni_study(name: str, url: str, context, trials: int, baseline_ms: float, run: bool) -> optuna.Study | str:
    """The NNI arm as a study of ``trials`` finished trials (one per uniform ratio), or why there is none.

    Runs NNI in its venv unless the study already holds the trials (or ``run`` is False), and
    stores each ratio as a trial with the same values and attributes as ours, so every arm
    is read the same way.
    """
    storage = open_storage(url)
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize", "minimize"], load_if_exists=True)
    if len(study.trials) >= trials or not run:
        return study if study.trials else "not run"
    rows = run_nni(context, trials, baseline_ms)
    if isinstance(rows, str):
        return rows
    for row in rows:
        attrs = {"finetuned": row["feasible"], "latency_ms": row["latency_ms"], "latency_p90_ms": row["latency_p90_ms"],
                 "param_ratio": row["param_ratio"], "mac_ratio": row["mac_ratio"], "params": row["params"], "keep": row["keep"]}
        study.add_trial(optuna.trial.create_trial(values=[row["dice"], row["latency_ms"]], user_attrs=attrs))
    return study


def run_nni(context, trials: int, baseline_ms: float) -> list[dict] | str:
    """Rows of the NNI arm from its venv, or why there are none."""
    if not Path(NNI_PYTHON).exists():
        return "not installed"
    probe = subprocess.run([NNI_PYTHON, "-c", "import nni, autosculpt"], capture_output=True, text=True)
    if probe.returncode:
        return "not installed"
    s = context.settings
    job = {"model": s.model, "image_size": s.image_size, "patients": s.patients, "seed": s.seed,
           "state_path": str(context.baseline.state_path), "keeps": nni_keeps(context, trials, baseline_ms), "epochs": s.epochs,
           "distill": s.distill, "budget_ms": s.budget_ms, "target": s.target}
    done = subprocess.run([NNI_PYTHON, str(NNI_WORKER)], input=json.dumps(job), capture_output=True, text=True)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode:
        tail = done.stderr.strip().splitlines()[-1:] or ["?"]
        return f"failed: {tail[0][:80]}"
    return rows


NAMES = {"uniform": "(a) uniform grid", "random": "(b) random, per-layer", "ours": "(c) ours: TPE, per-layer",
         "nni": "(d) NNI 3.0 L1Norm, uniform"}


def peers_table(studies: dict, budget, reference, base_dice, trials) -> Table:
    """One row per arm: a study, or a string saying why the arm has none."""
    budgets = (budget / 4, budget / 2, budget)
    table = Table(title=f"Same {trials} trials, schedule and budget per arm: best val Dice within each budget "
                        f"(baseline Dice {base_dice:.3f}, {reference:.2f} ms); hypervolume ref (Dice 0, {reference:.2f} ms)")
    table.add_column("arm")
    for b in budgets:
        table.add_column(f"Dice ≤{b:g} ms", justify="right")
    for column in ("hypervolume", "front size", "fine-tuned", "rejected"):
        table.add_column(column, justify="right")
    for arm, study in studies.items():
        if isinstance(study, str):
            table.add_row(NAMES[arm], study, *[""] * (len(budgets) + 3))
            continue
        points = [(t.values[0], t.user_attrs["latency_ms"]) for t in tuned(study)]
        cells = []
        for b in budgets:
            best = best_feasible(study, b)
            cells.append("—" if best is None else f"{best.values[0]:.3f} ({best.user_attrs['param_ratio']:.0f}x)")
        rejected = sum(1 for t in study.trials if t.user_attrs.get("finetuned") is False)
        table.add_row(NAMES[arm], *cells, f"{hypervolume(points, reference):.4f}", str(len(front(tuned(study), budget))),
                      str(len(points)), str(rejected))
    return table


if __name__ == "__main__":
    sys.exit(main())
