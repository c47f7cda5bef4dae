"""Headline benchmark: compress the off-the-shelf U-Net (``unet-paper``, 31M parameters) to a
CPU latency budget and compare with the paper's hand-tuned 1148x at <= 4% Dice loss.

Per seed (each seed its own generated data, baseline and study), it runs (or resumes: the
study lives in ``--storage``, so it can run in parts) a full search, then:

- **candidates** are the fine-tuned trials the search measured within the budget; the
  fine-tuned trials over it (the warm start's trade-off reference at 1.5x the budget, or
  anything infeasible) stay in the table marked as references and are never the result;
- the table shows the front over (validation Dice, parameters), the paper's axis, beside
  the front over (validation Dice, latency), with the baseline and every near candidate
  re-measured side by side (interleaved rounds, ONNX Runtime, 1 thread);
- the **named network** is the candidate with the highest parameter compression whose
  validation Dice is within 4% of the baseline's and whose re-measured median is within
  the budget; it gets the polish the search gives its winner (``autosculpt.search.study.polish``:
  two trials' schedules, the better of the trial's weights and the polish on validation)
  and is scored on the test patients, per structure; the headline uses that test Dice;
- with a CUDA device, the dense network's GPU latency (eager PyTorch fp32, and fp16
  channels-last) sits beside the named network on one CPU thread: the paper's other claim.

    python bench/paper.py                                   # seed 0 (about 30 min on 2 cores, baseline included)
    python bench/paper.py --seeds 0,1,2 --json paper.json   # the README's headline: the worst of three seeds
    python bench/paper.py --trials 20                       # first part; run again with more to resume
    python bench/paper.py --quick                           # unet-tiny, smoke data, 3 trials x 6 epochs, < 1 min

Defaults: 64x64 images (60 generated patients), a budget of the dense model's latency over
90 for ONNX Runtime at 1 thread (``--speedup``), 40 trials of 20 fine-tune epochs each.
Space: ``bench/paper-space.toml`` (per-layer keep ratios, 0.02..1 on a log scale), each
shape projected onto the budget; the warm start is the library's own
(:func:`autosculpt.space.warm_start`). Tiny networks need that many fine-tune epochs: an
8-channel network reached Dice 0.88 after 6 epochs and 0.93-0.94 after 20.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
import torch  # noqa: E402
from _common import (  # noqa: E402
    DICE_TOLERANCE,
    PAPER_RATIO,
    Remeasured,
    add_study_options,
    front,
    make_settings,
    onnx_of,
    remeasure,
    run_study,
    scaling_row,
    scaling_table,
)
from optuna.trial import FrozenTrial  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from autosculpt.search.deploy.export import trial_network  # noqa: E402
from autosculpt.search.latency import Target, cpu_model, measure  # noqa: E402
from autosculpt.search.study.best import ranked_within  # noqa: E402
from autosculpt.search.study.polish import polish_epochs, polish_finalists, polish_record  # noqa: E402
from autosculpt.search.study.study import Context  # noqa: E402
from autosculpt.search.training.train import Scores, evaluate  # noqa: E402

SPACE = Path(__file__).with_name("paper-space.toml")
PAPER_SPEEDUP = 90  # the compression pressure of 0.7 ms on the 2-core EPYC where the dense model took 61 ms
# every --json row has these (None for a seed that named no network), and a few more for a found one
JSON_FIELDS = ("seed", "trial", "param_ratio", "mac_ratio", "median_ms", "budget_ms", "within_budget", "val_dice",
               "test_dice", "baseline_test_dice")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    add_study_options(parser, image_size="64; 32 with --quick", epochs="20; 6 with --quick")
    parser.add_argument("--study", help="study name prefix; -s<seed> is appended (default: paper-<speedup>x-<size>px, "
                        "paper-<budget>ms-<size>px with --budget-ms, or paper-quick)")
    parser.add_argument("--speedup", type=float, help=f"budget = the dense model's latency on this CPU over X (default "
                        f"{PAPER_SPEEDUP:g}; ignored with --budget-ms)")
    parser.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds, one study each (default 0)")
    parser.add_argument("--json", type=Path, help="write the headline of every seed to this file")
    parser.add_argument("--trials", type=int, help="total trials of the study (default 40; 3 with --quick)")
    parser.add_argument("--warm-start", type=int, default=None, help="the library's warm start: the uniform and "
                        "capped shapes at the budget (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the final re-measurement")
    parser.add_argument("--quick", action="store_true", help="tiny CI run: unet-tiny, smoke data, 3 trials")
    return parser.parse_args(argv)


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give integers separated by commas, e.g. 0,1,2") from None


@dataclass(frozen=True)
class Choice:
    """What a study offers the headline.

    ``candidates``: fine-tuned trials measured within the budget by the search, best first;
    ``references``: fine-tuned trials over it (never a result); ``near``: the candidates
    within :data:`DICE_TOLERANCE` of the baseline's validation Dice, highest parameter
    compression first; the two fronts are over the candidates.
    """

    candidates: list[FrozenTrial]
    references: list[FrozenTrial]
    near: list[FrozenTrial]
    param_front: list[FrozenTrial]
    latency_front: list[FrozenTrial]


def choose(trials: list[FrozenTrial], budget_ms: float, base_dice: float) -> Choice:
    """Sort a study's ``trials`` for the headline (see :class:`Choice`)."""
    tuned = ranked_within(trials, float("inf"))
    candidates = ranked_within(trials, budget_ms)
    references = [t for t in tuned if t not in candidates]
    near = sorted((t for t in candidates if t.values[0] >= base_dice * (1 - DICE_TOLERANCE)),
                  key=lambda t: (-t.user_attrs["param_ratio"], t.number))
    return Choice(candidates, references, near, front(candidates, cost="params"), front(candidates))


def named(choice: Choice, latency: dict[int, Remeasured], budget_ms: float) -> FrozenTrial | None:
    """The headline's network: the first of ``choice.near`` whose re-measured median
    (``latency`` by trial number) is within ``budget_ms``; None when there is none."""
    return next((t for t in choice.near if latency[t.number].median_ms <= budget_ms), None)


@dataclass(frozen=True)
class Headline:
    """The named network of one seed, after the polish, scored on the test patients."""

    seed: int
    trial: FrozenTrial
    latency: Remeasured
    budget_ms: float
    val_dice: float
    polished_val_dice: float
    test: Scores
    baseline_test: Scores

    def to_dict(self) -> dict:
        a = self.trial.user_attrs
        return {"seed": self.seed, "trial": self.trial.number, "param_ratio": a["param_ratio"], "mac_ratio": a["mac_ratio"],
                "median_ms": self.latency.median_ms, "budget_ms": self.budget_ms,
                "within_budget": self.latency.median_ms <= self.budget_ms, "val_dice": self.val_dice,
                "test_dice": self.test.mean, "baseline_test_dice": self.baseline_test.mean,
                "polished_val_dice": self.polished_val_dice, "params": a["params"],
                "test_dice_per_class": self.test.per_class, "baseline_test_dice_per_class": self.baseline_test.per_class}

    def sentence(self, base_ms: float) -> str:
        a, loss = self.trial.user_attrs, self.test.mean / self.baseline_test.mean - 1
        reached = "reaches" if a["param_ratio"] >= PAPER_RATIO and loss >= -DICE_TOLERANCE else "does NOT reach"
        structures = ", ".join(f"{k} {v:.3f}" for k, v in self.test.per_class.items())
        return (f"seed {self.seed}: trial {self.trial.number}, {a['param_ratio']:,.0f}x fewer parameters ({a['params']:,}), "
                f"{a['mac_ratio']:,.0f}x fewer MACs, {self.latency.median_ms:.3f} ms for a {self.budget_ms:.3f} ms budget "
                f"({base_ms / self.latency.median_ms:.0f}x faster), test Dice {self.test.mean:.3f} ({loss:+.1%} against the "
                f"baseline's {self.baseline_test.mean:.3f}; {structures}) after the polish, val Dice {self.val_dice:.3f} "
                f"-> {self.polished_val_dice:.3f}: {reached} the paper's {PAPER_RATIO}x at <= {DICE_TOLERANCE:.0%} loss")


def main(argv=None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    console = Console(width=180)
    rows, headlines = [], []
    for seed in args.seeds:
        headline, row = run_seed(args, seed, console)
        headlines.append(headline)
        rows.append(row)
    console.print(scaling_table(rows, "Where the trials' time went"))
    console.print(summary(headlines, args.seeds))
    if args.json:
        nothing = dict.fromkeys(JSON_FIELDS)
        args.json.write_text(json.dumps([h.to_dict() if h else {**nothing, "seed": s} for s, h in zip(args.seeds, headlines)],
                                        indent=2))
        console.print(f"wrote {args.json}")
    console.print(f"CPU: {cpu_model()}; time taken: {time.perf_counter() - started:.0f} s")
    return 0


def run_seed(args, seed: int, console: Console) -> tuple[Headline | None, dict]:
    """One seed's study, table and headline (None when no candidate is near the baseline)."""
    settings, url, name = _study_settings(args, seed)
    budget = f"{settings.budget_ms:g}ms" if settings.budget_ms else f"{settings.speedup:g}x"
    console.print(f"study [bold]{name}[/] on {url}: {settings.model}, budget {budget}, {settings.trials} trials, "
                  f"{settings.epochs} fine-tune epochs, {settings.patients or 60} patients, {settings.image_size}px, seed {seed}")
    study, context, search_s = run_study(name, url, settings, run=not args.report)
    budget_ms = context.settings.budget_ms  # a speedup is resolved on this CPU when the study is created
    choice = choose(study.get_trials(deepcopy=False), budget_ms, context.baseline.val.mean)
    shown = _unique(choice.param_front + choice.latency_front + choice.references + choice.near)
    console.print(f"re-measuring the baseline and {len(shown)} trials, {args.rounds} interleaved rounds ...")
    models = {"baseline": onnx_of(context.baseline.model, context)}
    models.update({t.number: onnx_of(trial_network(t, context, url), context) for t in shown})
    latency = remeasure(models, tuple(context.example.shape), context.target, rounds=args.rounds)
    chosen = named(choice, latency, budget_ms)
    headline = None if chosen is None else _polished_headline(study, chosen, context, url, seed, latency[chosen.number],
                                                                budget_ms, console)
    console.print(front_table(study, context, choice, chosen, latency, budget_ms))
    base_ms = latency["baseline"].median_ms
    console.print(headline.sentence(base_ms) if headline else
                  f"seed {seed}: no fine-tuned network within the budget re-measured within it at <= {DICE_TOLERANCE:.0%} "
                  f"below the baseline's val Dice {context.baseline.val.mean:.3f}")
    if torch.cuda.is_available():
        console.print(gpu_table(context, base_ms, headline))
    console.print(f"seed {seed}: trials run in this call {search_s:.0f} s")
    return headline, scaling_row(name, study)


def _study_settings(args, seed: int):
    """(settings, storage URL, study name) of one seed's study."""
    if args.quick:
        settings = make_settings(model="unet-tiny", budget_ms=args.budget_ms or 5.0, trials=args.trials or 3, space=SPACE,
                                 preset="smoke", patients=args.patients, image_size=args.image_size, epochs=args.epochs or 6,
                                 warm_start=args.warm_start or 1, seed=seed)
        default_storage = f"sqlite:///{tempfile.mkdtemp(prefix='paper-quick-')}/studies.db"
        prefix = "paper-quick"
    else:
        speedup = None if args.budget_ms else args.speedup or PAPER_SPEEDUP
        settings = make_settings(model="unet-paper", budget_ms=args.budget_ms, speedup=speedup, trials=args.trials or 40,
                                 space=SPACE, patients=args.patients, image_size=args.image_size or 64,
                                 epochs=args.epochs or 20, warm_start=args.warm_start or 3, seed=seed)
        default_storage = "sqlite:///studies/bench.db"
        budget = f"{settings.budget_ms:g}ms" if settings.budget_ms else f"{settings.speedup:g}x"
        prefix = f"paper-{budget}-{settings.image_size}px" + (f"-{settings.patients}p" if settings.patients else "")
    url = args.storage or os.environ.get("AUTOSCULPT_BENCH_STORAGE") or default_storage
    return settings, url, f"{args.study or prefix}-s{seed}"


def _unique(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    seen: dict[int, FrozenTrial] = {}
    for t in trials:
        seen.setdefault(t.number, t)
    return sorted(seen.values(), key=lambda t: t.user_attrs["latency_ms"])


def _polished_headline(study: optuna.Study, trial: FrozenTrial, context: Context, url: str, seed: int,
                       latency: Remeasured, budget_ms: float, console: Console) -> Headline:
    """Polish ``trial`` as the search polishes its winner (once: a stored polish is reused) and score it on test."""
    record = polish_record(study, trial)
    net = trial_network(trial, context, url, study)
    if record is None:
        epochs = polish_epochs(context.settings, trial.user_attrs.get("param_ratio", 1.0))
        console.print(f"polishing trial {trial.number} ({epochs} epochs) ...")
        record = polish_finalists(study, [trial], lambda _: net, context, url)
    names = context.data.class_names
    return Headline(seed, trial, latency, budget_ms, trial.values[0], record["dice_after"],
                    evaluate(net, context.data.test, names), evaluate(context.baseline.model, context.data.test, names))


def front_table(study, context: Context, choice: Choice, chosen, latency, budget_ms: float) -> Table:
    """The baseline, both fronts, the references and the named network, re-measured side by side."""
    base_fig, base_dice, base_lat = context.baseline_figures, context.baseline.val.mean, latency["baseline"]
    table = Table(title=f"{study.study_name}: fine-tuned trials on the front over (val Dice, parameters) or (val Dice, "
                        f"latency) within the {budget_ms:g} ms budget, and the references over it; latency re-measured "
                        "side by side, ONNX Runtime, 1 thread")
    for column in ("net", "params", "x params", "MACs", "x MACs", "val Dice", "Δ Dice", "median ms", "p90 ms",
                   "speedup", "search ms", "note"):
        table.add_column(column, justify="left" if column in ("net", "note") else "right")
    table.add_row("baseline", f"{base_fig.params:,}", "1", f"{base_fig.macs / 1e6:,.1f}M", "1", f"{base_dice:.3f}", "",
                  f"{base_lat.median_ms:.2f}", f"{base_lat.p90_ms:.2f}", "1.0", "", context.settings.model)
    for t in _unique(choice.param_front + choice.latency_front + choice.references + ([chosen] if chosen else [])):
        a, lat = t.user_attrs, latency[t.number]
        table.add_row(f"trial {t.number}", f"{a['params']:,}", f"{a['param_ratio']:.0f}", f"{a['macs'] / 1e6:,.2f}M",
                      f"{a['mac_ratio']:.0f}", f"{t.values[0]:.3f}", f"{(t.values[0] / base_dice - 1):+.1%}",
                      f"{lat.median_ms:.3f}", f"{lat.p90_ms:.3f}", f"{base_lat.median_ms / lat.median_ms:.0f}x",
                      f"{a['latency_ms']:.3f}", _note(t, choice, chosen, lat, budget_ms))
    return table


def _note(t: FrozenTrial, choice: Choice, chosen, lat: Remeasured, budget_ms: float) -> str:
    if t in choice.references:
        return "reference: over the budget, not a result"
    notes = ["params front" if t in choice.param_front else "", "latency front" if t in choice.latency_front else "",
             "re-measured over the budget" if lat.median_ms > budget_ms else "",
             f"NAMED: most compression within {DICE_TOLERANCE:.0%}" if t is chosen else ""]
    return ", ".join(filter(None, notes))


def summary(headlines: list[Headline | None], seeds: list[int]) -> Table:
    """One row per seed and the worst of them (least compression; no network at all is worst)."""
    table = Table(title="Headline per seed: the named network after the polish, on the test patients")
    for column in ("seed", "trial", "x params", "x MACs", "median ms", "budget ms", "val Dice", "test Dice",
                   "baseline test Dice", "Δ test Dice"):
        table.add_column(column, justify="right")
    for seed, h in zip(seeds, headlines):
        if h is None:
            table.add_row(str(seed), "none", *[""] * 8)
            continue
        d = h.to_dict()
        table.add_row(str(seed), str(d["trial"]), f"{d['param_ratio']:,.0f}", f"{d['mac_ratio']:,.0f}", f"{d['median_ms']:.3f}",
                      f"{d['budget_ms']:.3f}", f"{d['val_dice']:.3f}", f"{d['test_dice']:.3f}",
                      f"{d['baseline_test_dice']:.3f}", f"{d['test_dice'] / d['baseline_test_dice'] - 1:+.1%}")
    found = [h for h in headlines if h is not None]
    if found and len(found) == len(headlines):
        worst = min(found, key=lambda h: h.trial.user_attrs["param_ratio"])
        ratios = [h.trial.user_attrs["param_ratio"] for h in found]
        table.caption = (f"worst seed: {worst.seed} ({worst.trial.user_attrs['param_ratio']:,.0f}x, test Dice "
                         f"{worst.test.mean:.3f}); spread {min(ratios):,.0f}x-{max(ratios):,.0f}x, median "
                         f"{statistics.median(ratios):,.0f}x")
    elif len(headlines) > 1:
        table.caption = "worst seed: a seed named no network"
    return table


def gpu_table(context: Context, cpu_base_ms: float, headline: Headline | None) -> Table:
    """The dense network on this machine's GPU beside the named network on one CPU thread."""
    shape = tuple(context.example.shape)
    eager = measure(context.baseline.model, shape, Target(runtime="torch", device="cuda")).median_ms
    half = _fp16_channels_last_ms(context.baseline.model, shape)
    table = Table(title=f"The paper's other claim: dense {context.settings.model} on {torch.cuda.get_device_name(0)} "
                        f"against the named network on 1 CPU thread ({cpu_model()})")
    for column in ("model", "where", "median ms"):
        table.add_column(column, justify="right" if column == "median ms" else "left")
    table.add_row("dense", "GPU, eager PyTorch fp32", f"{eager:.3f}")
    table.add_row("dense", "GPU, eager PyTorch fp16 channels-last", f"{half:.3f}")
    table.add_row("dense", "CPU, ONNX Runtime 1 thread", f"{cpu_base_ms:.3f}")
    if headline is not None:
        cpu = headline.latency.median_ms
        verdict = "the CPU beats the GPU" if cpu < min(eager, half) else "the GPU is faster"
        table.add_row(f"named (trial {headline.trial.number})", "CPU, ONNX Runtime 1 thread", f"{cpu:.3f}")
        table.caption = f"{verdict}: {min(eager, half) / cpu:.2f}x the fastest GPU figure"
    return table


def _fp16_channels_last_ms(model: torch.nn.Module, shape: tuple[int, ...], runs: int = 200) -> float:
    """Median ms of one fp16 channels-last forward on the GPU (CUDA events; after 20 warm-up runs)."""
    import copy

    net = copy.deepcopy(model).eval().cuda().half().to(memory_format=torch.channels_last)
    image = torch.randn(*shape, device="cuda", dtype=torch.half).to(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode():
        for i in range(runs + 20):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            net(image)
            end.record()
            torch.cuda.synchronize()
            if i >= 20:
                times.append(start.elapsed_time(end))
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
