"""Which short fine-tune ranks networks as their polish does? Replays a polished study's finalists.

Each finalist of a stored study (``--finalists K`` polished K of them) is pruned from the
study's baseline again and fine-tuned for the study's epochs under each variant; the table
gives, per variant, the mean and lowest validation Dice at the pruner's first rung and at the
last epoch, Spearman's rank correlation of those scores against the study's polished Dice, and
the median time of one fine-tune. The polished Dice is the study's own (continued from the
default fine-tune's weights). Variants (comma-separated):

- ``current``: the fine-tune trials run (what the study stored, replayed);
- ``bn``: BatchNorm statistics re-estimated on the training slices before fine-tuning;
- ``distill=W``: distillation from the baseline at weight W;
- ``lr=F``: the learning rate times F (at most 0.03);
- ``batch=N``: batches of N slices;
- ``epochs=N``: N epochs instead of the study's (the last column is then epoch N).

``--repeat-polish`` first fine-tunes and polishes every finalist again, as the study did but
at another seed, and prints Spearman of that repeat against the study's polish: the most any
trial score can hope for when the polished networks lie within one fine-tune's noise.

``--stored`` trains nothing: it prints Spearman against the polished Dice of what the study
stored of each finalist (its trial score, other readings of its fine-tune's epochs, its
size and latency): which score the trials could be compared by instead, for free.

Example (after ``autosculpt search --speedup 30 --seed 2 --trials 24 --finalists 10
--storage sqlite:///s2.db``)::

    python bench/finetunes.py sqlite:///s2.db STUDY --variants current,bn,distill=0.5,lr=0.33,batch=8
    python bench/finetunes.py sqlite:///s2.db STUDY --repeat-polish --variants ""
    python bench/finetunes.py sqlite:///s2.db STUDY --stored --variants ""
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr

from autosculpt.search.latency import cpu_model
from autosculpt.search.study.polish import polish_epochs, polish_network, rank_correlation
from autosculpt.search.study.settings import POLISH_ATTR, SETTINGS_ATTR, Settings
from autosculpt.search.study.storage import load_study, open_storage
from autosculpt.search.study.study import Context, prepare_study
from autosculpt.search.study.trial import first_rung
from autosculpt.search.training.train import Schedule, teacher_logits, train
from autosculpt.space import Recipe, apply_recipe

LR_CEILING = 0.03
REPEAT_SEED = 1000  # added to each finalist's seed for the repeat of its fine-tune and polish


def reestimate_batchnorm(net: torch.nn.Module, images: torch.Tensor, batch: int = 32) -> None:
    """Replace ``net``'s BatchNorm running statistics by those of ``images`` (a cumulative average)."""
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    net.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            net(images[start : start + batch])
    for norm in norms:
        norm.momentum = 0.1
    net.eval()


def variant_schedule(variant: str, schedule: Schedule) -> Schedule:
    """``schedule`` changed as ``variant`` (see the module) says."""
    name, _, value = variant.partition("=")
    if name == "distill":
        return replace(schedule, distill=float(value))
    if name == "lr":
        return replace(schedule, lr=min(LR_CEILING, schedule.lr * float(value)))
    if name == "batch":
        return replace(schedule, batch_size=int(value))
    if name == "epochs":
        return replace(schedule, epochs=int(value))
    if name in ("current", "bn"):
        return schedule
    raise SystemExit(f"unknown variant {variant!r}: use current, bn, distill=W, lr=F, batch=N or epochs=N")


def replay(context: Context, recipe: Recipe, seed: int, variant: str,
           teacher: torch.Tensor | None) -> tuple[torch.nn.Module, list[float], float]:
    """``recipe``'s network pruned from the study's baseline and fine-tuned for the study's
    epochs as ``variant`` says (distilling from ``teacher`` where the variant distils): the
    network, its validation Dice after each epoch, and the seconds the fine-tune took."""
    net = apply_recipe(context.baseline.model, recipe, context.example, context.calibration)
    if variant == "bn":
        reestimate_batchnorm(net, context.data.train.images)
    schedule = variant_schedule(variant, context.finetune_schedule(net, context.settings.epochs, seed, context.settings.distill))
    history: list[float] = []
    start = time.perf_counter()
    train(net, context.data, schedule, teacher_outputs=teacher if schedule.distill else None,
          on_epoch=lambda epoch, loss, scores: history.append(scores.mean) or True)
    return net, history, time.perf_counter() - start


def polished_again(context: Context, recipe: Recipe, seed: int, param_ratio: float) -> float:
    """Validation Dice of ``recipe``'s network fine-tuned as trials are, then polished as the
    study's finalists were (:func:`polish_network`), both at ``seed``."""
    net, _, _ = replay(context, recipe, seed, "current", context.teacher_outputs)
    return polish_network(net, context, polish_epochs(context.settings, param_ratio), seed).dice_after


def repeat_polish(context: Context, candidates: list[dict], trials: dict, polished: list[float]) -> None:
    """Print how well a second fine-tune and polish of the finalists ranks them as the study's did (``polished``)."""
    again = []
    for c in candidates:
        trial = trials[c["trial"]]
        again.append(polished_again(context, Recipe.from_dict(trial.user_attrs["recipe"]),
                                    context.settings.seed + c["trial"] + REPEAT_SEED, trial.user_attrs.get("param_ratio", 1.0)))
        print(f"trial {c['trial']}: polished {c['dice_after']:.3f}, again {again[-1]:.3f}", flush=True)
    gaps = [abs(a - b) for a, b in zip(again, polished)]
    print(f"repeat of the polish on {len(candidates)} finalists: val Dice {min(again):.3f}-{max(again):.3f} "
          f"(study's {min(polished):.3f}-{max(polished):.3f}), median gap {statistics.median(gaps):.3f}; "
          f"Spearman against the study's polish {spearmanr(again, polished).statistic:+.2f}", flush=True)


def stored_scores(trial, rung: int) -> dict[str, float]:
    """Readings of ``trial``'s stored fine-tune and figures that a study could rank it by."""
    epochs = trial.user_attrs.get("dice_by_epoch") or [trial.values[0]]
    return {"trial score (last epoch)": trial.values[0], f"epoch {rung} (first rung)": epochs[min(rung, len(epochs)) - 1],
            "mean of the last 3 epochs": statistics.mean(epochs[-3:]), "best epoch": max(epochs),
            "gain over the last 3 epochs": epochs[-1] - epochs[max(0, len(epochs) - 4)],
            "worst structure": min(trial.user_attrs.get("dice_per_class", {"": trial.values[0]}).values()),
            "parameters": trial.user_attrs.get("params", 0), "MACs": trial.user_attrs.get("macs", 0),
            "latency": trial.user_attrs.get("latency_ms", 0.0)}


def print_stored(candidates: list[dict], trials: dict, polished: list[float], rung: int) -> None:
    """A table: Spearman of each of :func:`stored_scores` against the ``polished`` Dice."""
    readings = [stored_scores(trials[c["trial"]], rung) for c in candidates]
    table = Table(title=f"stored scores of {len(candidates)} finalists against their polished val Dice "
                        f"({min(polished):.3f}-{max(polished):.3f})")
    for column in ("score", "range", "Spearman"):
        table.add_column(column)
    for name in readings[0]:
        values = [r[name] for r in readings]
        rho = rank_correlation(values, polished)
        table.add_row(name, f"{min(values):.4g}-{max(values):.4g}", "constant" if rho is None else f"{rho:+.2f}")
    Console().print(table)


def print_variants(context: Context, name: str, variants: list[str], finalists: list, polished: list[float]) -> None:
    """A table: each variant's replayed fine-tunes of ``finalists`` and their Spearman against the ``polished`` Dice."""
    settings = context.settings
    teacher = context.teacher_outputs  # the study's, where it distils
    if teacher is None:
        teacher = teacher_logits(context.baseline.model, context.data.train.images)
    rung = first_rung(settings.epochs)
    table = Table(title=f"{name}: {len(finalists)} finalists, {settings.epochs}-epoch fine-tunes "
                        f"({cpu_model()}, {torch.get_num_threads()} threads)")
    for column in ("variant", f"epoch {rung}: mean (lowest)", "Spearman", "last epoch: mean (lowest)",
                   "Spearman", "s per fine-tune"):
        table.add_column(column)
    for variant in variants:
        runs = [replay(context, Recipe.from_dict(t.user_attrs["recipe"]), settings.seed + t.number, variant, teacher)[1:]
                for t in finalists]
        row = [variant]
        for epoch in (rung, None):
            scores = [history[epoch - 1] if epoch else history[-1] for history, _ in runs]
            row += [f"{statistics.mean(scores):.3f} ({min(scores):.3f})", f"{spearmanr(scores, polished).statistic:+.2f}"]
        table.add_row(*row, f"{statistics.median(s for _, s in runs):.0f}")
        print(f"{variant}: done", flush=True)
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("Example")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("storage", help="the study's storage URL")
    parser.add_argument("study", help="a study polished with --finalists 3 or more")
    parser.add_argument("--variants", default="current,bn,distill=0.5,lr=0.33,batch=8",
                        help="comma-separated fine-tune variants to replay (empty: none)")
    parser.add_argument("--repeat-polish", action="store_true",
                        help="first fine-tune and polish every finalist again at another seed")
    parser.add_argument("--stored", action="store_true",
                        help="first print how well the study's stored scores of its finalists rank the polish")
    args = parser.parse_args()
    study = load_study(args.study, open_storage(args.storage))
    settings = Settings.from_dict(study.user_attrs[SETTINGS_ATTR])
    candidates = (study.user_attrs.get(POLISH_ATTR) or {}).get("candidates", [])
    if len(candidates) < 3:
        raise SystemExit(f"{args.study} polished {len(candidates)} finalists: resume it with --finalists 3 or more")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    polished = [c["dice_after"] for c in candidates]
    if args.stored:
        print_stored(candidates, trials, polished, first_rung(settings.epochs))
    variants = [v for v in args.variants.split(",") if v]
    if not (args.repeat_polish or variants):
        return
    context = prepare_study(study, args.storage, settings)
    if args.repeat_polish:
        repeat_polish(context, candidates, trials, polished)
    if variants:
        print_variants(context, args.study, variants, [trials[c["trial"]] for c in candidates], polished)


if __name__ == "__main__":
    main()
