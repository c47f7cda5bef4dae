"""The finalists' polish: longer fine-tunes of the best networks, and the winner among them.

A trial fine-tunes for a few epochs so that the study can afford many shapes; the networks
that could win deserve more. At tight budgets a short fine-tune barely predicts where a
network ends up (on ``unet`` at 30x a polish lifted a winner from val Dice 0.59 to 0.957
while others stayed collapsed), so the polish takes the best few distinct networks within
the budget (``Settings.finalists``, ranked by their trial score) rather than one, and the
winner is the finalist with the best validation Dice after its polish. Each continues from
its trial's fine-tuned weights for :func:`polish_epochs` (two trials' schedules by
default, longer for tiny networks), once without distillation and, when the study distils (``--distill W``), once
with it, and keeps whichever scores the best validation Dice, the trial's own weights
included: a polish never makes a network worse on validation. (Two schedules, not three:
at three the polish took 102 s of the README's first command on a 2-core AMD EPYC and its
model scored test Dice 0.969; at two, 72 s and 0.964 or 0.969 in two runs.)

The record tells how well the trials' ranking predicted the polished one: Spearman's rank
correlation of the finalists' trial scores against their polished validation Dice.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import FrozenTrial
from scipy.stats import spearmanr

from ..training.train import evaluate, train
from .settings import POLISH_ATTR, Settings
from .storage import artifact_store
from .study import Context
from .weights import upload_state_dict

# A polish lasts ``Settings.polish`` epochs (two trials' schedules) for networks with up to 100x
# fewer parameters than the baseline, (log10(ratio) - 1) times as long past that, at most
# MAX_POLISH_FACTOR times: tiny networks learn late. 48 epochs instead of 16 (unet, 96 px, 30x,
# 2-core Intel Xeon, 2026-12-05) lifted val Dice 0.935 -> 0.953 at 892x fewer parameters (test Dice
# -1.8 % -> -1.1 % of the baseline's), 0.930 -> 0.944 at 225x (-1.8 % -> -1.6 %) and 0.930 -> 0.944
# at 3,607x (-3.8 % -> -2.4 %); the first command's 41x network and ACDC's 96x keep 16.
MAX_POLISH_FACTOR = 3.0

# on_epoch(trial number, variant, epoch, epochs, validation Dice): progress of a polish.
PolishProgress = Callable[[int, str, int, int, float], None]


def polish_finalists(study: optuna.Study, finalists: list[FrozenTrial], network: Callable[[FrozenTrial], torch.nn.Module],
                     context: Context, storage_url: str, on_epoch: PolishProgress | None = None) -> dict:
    """Polish each of ``finalists`` (``network(trial)`` builds its fine-tuned network) and
    record the winner in the study; finalists an earlier polish of this study covered for as
    many epochs keep that polish (it is not repeated; other epochs, from a resume with
    ``--polish-epochs``, polish again).

    Stores and returns the study user attribute ``polish``: the winner's record (``trial``,
    Dice before and after on validation, epochs, each variant's Dice, which one was kept and,
    when a polish was kept, the ``weights_artifact`` export uses instead of the trial's),
    plus ``candidates`` (every finalist's record, in the order given), ``rank_correlation``
    (Spearman, trial scores against polished Dice; None below 3 finalists or when either
    does not vary) and ``time_s`` (all polishes, this call and earlier ones).
    """
    stored = study.user_attrs.get(POLISH_ATTR)
    earlier = stored.get("candidates", [stored]) if stored else []  # [stored]: before finalists
    epochs = {t.number: polish_epochs(context.settings, t.user_attrs.get("param_ratio", 1.0)) for t in finalists}
    done = {c["trial"]: c for c in earlier if c.get("epochs") == epochs.get(c["trial"])}
    candidates = [done.get(t.number) or polish_one(study, t, network(t), context, storage_url, on_epoch) for t in finalists]
    winner = max(candidates, key=lambda c: c["dice_after"])  # the first of equals: the better trial score
    scores = [t.values[0] for t in finalists]
    record = {**winner, "candidates": candidates, "rank_correlation": rank_correlation(scores, [c["dice_after"] for c in candidates]),
              "time_s": sum(c["time_s"] for c in candidates)}
    study.set_user_attr(POLISH_ATTR, record)
    return record


def polish_one(study: optuna.Study, trial: FrozenTrial, net: torch.nn.Module, context: Context, storage_url: str,
               on_epoch: PolishProgress | None = None) -> dict:
    """Polish ``net`` (``trial``'s fine-tuned network) in place; its record (see
    :func:`polish_finalists`), the polished weights uploaded as an artifact when kept."""
    epochs = polish_epochs(context.settings, trial.user_attrs.get("param_ratio", 1.0))
    start = time.perf_counter()
    progress = None if on_epoch is None else functools.partial(on_epoch, trial.number)
    polished = polish_network(net, context, epochs, context.settings.seed + trial.number, progress)
    record = {"trial": trial.number, "score": trial.values[0], "epochs": epochs, "dice_before": polished.dice_before,
              "variants": polished.variants, "kept": polished.kept}
    if polished.kept != "trial":
        record["weights_artifact"] = upload_state_dict(artifact_store(storage_url), study, net, f"polish-{trial.number}.pt")
    return record | {"dice_after": polished.dice_after, "time_s": time.perf_counter() - start}


@dataclass(frozen=True)
class Polished:
    """What :func:`polish_network` did: validation Dice before, each variant's after, which was kept."""

    dice_before: float
    variants: dict[str, float]
    kept: str  # a variant's name, or "trial": none beat the network's own weights
    dice_after: float


def polish_network(net: torch.nn.Module, context: Context, epochs: int, seed: int,
                   on_epoch: Callable[[str, int, int, float], None] | None = None) -> Polished:
    """Polish ``net`` (a fine-tuned network of ``context``'s study) in place, storage untouched:
    each variant (see :func:`_variants`) continues from its weights for ``epochs`` at ``seed``,
    and ``net`` keeps whichever scores the best validation Dice, its own weights included.
    ``on_epoch(variant, epoch, epochs, validation Dice)`` follows the epochs."""
    before = evaluate(net, context.data.val, context.data.class_names).mean
    best_state, best_dice, kept, variants = None, before, "trial", {}
    for variant, weight in _variants(context.settings.distill):
        candidate = copy.deepcopy(net)
        progress = None if on_epoch is None else functools.partial(on_epoch, variant)
        variants[variant] = _train(candidate, context, epochs, weight, seed, progress)
        if variants[variant] > best_dice:
            best_state, best_dice, kept = candidate.state_dict(), variants[variant], variant
    if best_state is not None:
        net.load_state_dict(best_state)
    return Polished(before, variants, kept, best_dice)


def polish_epochs(settings: Settings, param_ratio: float) -> int:
    """Epochs of the polish of a network with ``param_ratio`` times fewer parameters than the
    baseline: ``--polish-epochs`` where given, else ``settings.polish`` stretched for tiny
    networks (see MAX_POLISH_FACTOR)."""
    if settings.polish_epochs is not None:
        return settings.polish_epochs
    factor = min(MAX_POLISH_FACTOR, max(1.0, math.log10(max(param_ratio, 1.0)) - 1))
    return round(settings.polish * factor)


def rank_correlation(scores: list[float], polished: list[float]) -> float | None:
    """Spearman's rho of ``scores`` against ``polished``; None for fewer than 3 pairs or a constant side."""
    if len(scores) < 3 or len(set(scores)) < 2 or len(set(polished)) < 2:
        return None
    rho = float(spearmanr(scores, polished).statistic)
    return None if math.isnan(rho) else rho


def polish_record(study: optuna.Study, trial: FrozenTrial) -> dict | None:
    """The study's polish when ``trial`` won it (Dice before and after, weights), None otherwise."""
    record = study.user_attrs.get(POLISH_ATTR)
    return record if record and record.get("trial") == trial.number else None


def polished_weights(study: optuna.Study, trial: FrozenTrial) -> str | None:
    """The artifact id of ``trial``'s polished weights, if the study kept a polish of it."""
    return (polish_record(study, trial) or {}).get("weights_artifact")


def _variants(distill: float) -> list[tuple[str, float]]:
    """("plain", 0) always; ("distilled", W) as well when the study distils at weight W."""
    return [("plain", 0.0)] + ([("distilled", distill)] if distill > 0 else [])


def _train(net: torch.nn.Module, context: Context, epochs: int, distill: float, seed: int,
           on_epoch: Callable[[int, int, float], None] | None) -> float:
    """Fine-tune ``net`` for ``epochs`` on the polish's schedule; its validation Dice after the last one."""
    schedule = context.finetune_schedule(net, epochs, seed, distill, trial=False)

    def report(epoch: int, loss: float, scores) -> bool:
        if on_epoch is not None:
            on_epoch(epoch + 1, schedule.epochs, scores.mean)
        return True

    return train(net, context.data, schedule, teacher_outputs=context.teacher_outputs if distill > 0 else None,
                 on_epoch=report).mean
