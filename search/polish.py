"""The winner's polish: a longer fine-tune of the chosen network before it is exported.

A trial fine-tunes for a few epochs so that the study can afford many shapes; the one
that wins deserves more. :func:`polish` continues from the trial's fine-tuned weights
for ``Settings.polish`` epochs (two trials' schedules by default), once without
distillation and, when the study distils (``--distill W``), once with it, and keeps
whichever scores the best validation Dice, the trial's own weights included: a polish
never makes the exported model worse on validation. (Two schedules, not three: at three
the polish took 102 s of the README's first command on a 2-core AMD EPYC and its model
scored test Dice 0.969; at two, 72 s and 0.964 or 0.969 in two runs.)
"""

from __future__ import annotations

import copy
import time

import optuna
import torch
from optuna.trial import FrozenTrial

from .storage import artifact_store
from .study import Context
from .weights import upload_state_dict
from .train import evaluate, teacher_logits, train

POLISH_ATTR = "polish"


def polish(study: optuna.Study, trial: FrozenTrial, net: torch.nn.Module, context: Context, storage_url: str,
           on_epoch=None) -> dict:
    """Polish ``net`` (``trial``'s fine-tuned network) in place and record it in the study.

    Stores the study user attribute ``polish``: the trial, Dice before and after (validation),
    epochs, each variant's Dice, which one was kept and, when a polish was kept, the
    ``weights_artifact`` export uses instead of the trial's. Returns that record.
    ``on_epoch(variant, epoch, epochs, dice)`` follows progress.
    """
    settings = context.settings
    before = evaluate(net, context.data.val, context.data.class_names).mean
    record = {"trial": trial.number, "epochs": settings.polish, "dice_before": before, "variants": {}, "kept": "trial"}
    start = time.perf_counter()
    best_state, best_dice = None, before
    for variant, weight in _variants(settings.distill):
        candidate = copy.deepcopy(net)
        dice = _train(candidate, context, weight, trial.number, variant, on_epoch)
        record["variants"][variant] = dice
        if dice > best_dice:
            best_state, best_dice, record["kept"] = candidate.state_dict(), dice, variant
    if best_state is not None:
        net.load_state_dict(best_state)
        record["weights_artifact"] = upload_state_dict(artifact_store(storage_url), study, net, f"polish-{trial.number}.pt")
    record.update(dice_after=best_dice, time_s=time.perf_counter() - start)
    study.set_user_attr(POLISH_ATTR, record)
    return record


def polish_record(study: optuna.Study, trial: FrozenTrial) -> dict | None:
    """The study's polish of ``trial`` (Dice before and after, weights), None if it has none."""
    record = study.user_attrs.get(POLISH_ATTR)
    return record if record and record.get("trial") == trial.number else None


def polished_weights(study: optuna.Study, trial: FrozenTrial) -> str | None:
    """The artifact id of ``trial``'s polished weights, if the study kept a polish of it."""
    return (polish_record(study, trial) or {}).get("weights_artifact")


def _variants(distill: float) -> list[tuple[str, float]]:
    """("plain", 0) always; ("distilled", W) as well when the study distils at weight W."""
    return [("plain", 0.0)] + ([("distilled", distill)] if distill > 0 else [])


def _train(net: torch.nn.Module, context: Context, distill: float, seed: int, variant: str, on_epoch) -> float:
    """Fine-tune ``net`` for the polish's epochs; its validation Dice after the last one."""
    settings = context.settings
    schedule = context.finetune_schedule(net, settings.polish, settings.seed + seed, distill, trial=False)
    teacher = teacher_logits(context.baseline.model, context.data.train.images) if distill > 0 else None

    def report(epoch: int, loss: float, scores) -> bool:
        if on_epoch is not None:
            on_epoch(variant, epoch + 1, schedule.epochs, scores.mean)
        return True

    return train(net, context.data, schedule, teacher_outputs=teacher, on_epoch=report).mean
