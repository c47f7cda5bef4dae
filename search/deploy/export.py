"""Export a trial as a deployable model: ONNX, a torch.export program and a model card.

The network is rebuilt from the cached baseline, the trial's recipe and its fine-tuned
(or polished) state dict (an Optuna artifact, loaded with ``weights_only=True``); nothing
is unpickled. Export checks ONNX Runtime against PyTorch, re-measures latency on the
target with the trials' harness (the study's reference, several pooled measurements,
nothing else of this process running meanwhile) and judges the model (:mod:`.verdict`).
With ``precision="int8"`` (and always for a trial the search ran in INT8) it also writes
``model.int8.onnx`` (:mod:`..quantize`), scored and measured the same way. ``model.onnx``
stays the fp32 model; the card's ``deploy`` names the file to deploy (INT8 when the search
chose it, or when it measured faster than fp32), ``precision`` its precision, and the
verdict judges that file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from ...errors import UserError
from ...space import Recipe, figures, is_nnunet_folder, nnunet_fold, rebuild, write_nnunet_folder
from ...units import ms
from ..data import SegmentationData
from ..latency import LatencyStats, measure_onnx, pooled, target_vnni
from ..onnx_io import ort_labels, to_onnx
from ..quantize import INT8_FILE, Int8Model, calibration_slices, quantize_int8, reduce_range_for
from ..study.polish import polish_record, polished_weights
from ..study.settings import PRECISIONS, Settings
from ..study.storage import artifact_store
from ..study.study import Context, environment, nnunet_preprocessing, prepare_study, study_reference
from ..study.weights import download_state_dict
from ..training.metrics import per_volume, summary
from ..training.train import Scores, dice_counts, predict, scores_from_counts, split_scores
from .card import ONNX_FILE, write_card
from .samples import QualitativeSample
from .verdict import Verdict, fastest_and_command, trade_off

SAMPLE_COUNT = 4
EXPORT_MEASUREMENTS = 3  # pooled for the verdict


@dataclass
class Exported:
    """What an export wrote: the model card (as in model.json), report samples and the verdict."""

    card: dict
    samples: list[QualitativeSample]
    verdict: Verdict


def export_trial(study: optuna.Study, trial: FrozenTrial, folder: Path, storage_url: str,
                 budget_ms: float | None = None, context: Context | None = None, precision: str = "fp32",
                 nnunet_folder: bool = False) -> Exported:
    """Write ``model.onnx``, ``model.pt2`` and ``model.json`` for ``trial`` into ``folder``.

    The model is judged against ``budget_ms`` (default: the study's). ``context`` (the
    study's, from :func:`prepare`) saves loading it again. ``precision`` "int8" also
    writes ``model.int8.onnx`` and the card's ``int8`` section (:func:`_int8_section`); a
    trial searched in INT8 (user attribute ``precision``) is always exported so. The card's
    top-level figures (``dice``, ``latency``, ``per_volume``, ``file_size``, ``sha256``)
    and the verdict are those of the deployed file, ``deploy``. ``nnunet_folder`` also makes
    ``folder`` an nnU-Net trained-model folder (:func:`~autosculpt.space.write_nnunet_folder`)
    for a study of an nnU-Net; a network its plans cannot describe raises UserError first.
    """
    searched = trial.user_attrs.get("precision", "fp32")
    precision = "int8" if searched == "int8" else precision
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if trial.state != TrialState.COMPLETE or "weights_artifact" not in trial.user_attrs:
        raise UserError(f"trial {trial.number} has no fine-tuned weights (state {trial.state.name}, "
                        f"feasible={trial.user_attrs.get('feasible')}): export a complete trial within budget")
    settings = Settings.from_dict(study.user_attrs["settings"])
    context = context or prepare_study(study, storage_url, replace(settings, distill=0.0))
    net = trial_network(trial, context, storage_url, study)
    folder.mkdir(parents=True, exist_ok=True)
    if nnunet_folder:
        if not is_nnunet_folder(settings.model):
            raise UserError(f"--format nnunet needs a study of an nnU-Net trained-model folder, and {study.study_name} "
                            f"searched {settings.model}: export it as ONNX")
        write_nnunet_folder(nnunet_fold(settings.model), net, folder)
    fp32 = _scored(ONNX_FILE, to_onnx(net, tuple(context.example.shape)), study, context, folder)
    torch.export.save(torch.export.export(net, (context.example,)), folder / "model.pt2")
    quantized, int8 = _int8_model(fp32.onnx, study, context, folder) if precision == "int8" else (None, None)
    deployed = int8 if int8 and (searched == "int8" or int8.stats.median_ms < fp32.stats.median_ms) else fp32
    budget = budget_ms or settings.budget_ms
    verdict = Verdict(budget, deployed.stats.median_ms, deployed.stats.p90_ms, deployed.test.mean, context.baseline.test.mean,
                      settings.max_dice_loss, trade_off(study, budget, context.baseline.val.mean, settings.max_dice_loss))
    figs = figures(net, context.example, context.groups)
    base_pred = predict(context.baseline.model, context.data.test.images)
    card = {
        "study": study.study_name, "trial": trial.number, "input_shape": list(context.example.shape),
        "class_names": list(context.data.class_names), "deploy": deployed.file, "precision": deployed.precision,
        "searched_precision": searched, **deployed.figures(), "val_dice": trial.values[0],
        "trial_latency": trial.user_attrs.get("latency"), "polish": polish_record(study, trial), "verdict": verdict.to_dict(),
        "params": figs.params, "macs": figs.macs, **figs.ratios_against(context.baseline_figures),
        "channels": figs.channels, "baseline_channels": context.baseline_figures.channels,
        "baseline": {"params": context.baseline_figures.params, "macs": context.baseline_figures.macs,
                     "dice": context.baseline.test.mean, "dice_per_class": context.baseline.test.per_class},
        "recipe": trial.user_attrs["recipe"], "kept_whole": context.survey.kept_whole, "onnx_max_abs_diff": _max_difference(net, fp32.onnx, context.data.test.images[:8]),
        "model": settings.model, "data": context.data.source, "budget_ms": budget, "speedup": settings.speedup,
        "environment": environment(), "per_volume": _per_volume(context, deployed.pred, base_pred),
    }
    if (nnunet := nnunet_preprocessing(settings.model)) is not None:
        card["nnunet_preprocessing"] = nnunet.to_dict()  # what predict must do to a raw case
    if int8 is not None:
        card["int8"] = _int8_section(quantized, int8, fp32, vnni=target_vnni(context.target))
    write_card(folder, card)
    study.set_user_attr("export", {"trial": trial.number, "dir": str(folder), "file_size": card["file_size"],
                                   "precision": deployed.precision, "dice": deployed.test.mean,
                                   "dice_per_class": deployed.test.per_class, "latency": deployed.stats.to_dict(),
                                   "verdict": verdict.to_dict(), "per_volume": card["per_volume"]})
    return Exported(card, _samples(context, deployed.pred, base_pred, card["per_volume"]["volumes"]), verdict)


def trial_network(trial: FrozenTrial, context: Context, storage_url: str, study: optuna.Study | None = None) -> torch.nn.Module:
    """The trial's network from baseline + recipe + its stored state dict: the polished one
    when ``study`` kept a polish of this trial, else the trial's own fine-tuned weights."""
    artifact_id = (study and polished_weights(study, trial)) or trial.user_attrs["weights_artifact"]
    state = download_state_dict(artifact_store(storage_url), artifact_id)
    recipe = Recipe.from_dict(trial.user_attrs["recipe"])
    return rebuild(context.baseline.model, recipe, context.example, state).eval()


def _remeasure(onnx_bytes: bytes, study: optuna.Study, context: Context):
    """The model's latency with the trials' harness: same target and reference, pooled."""
    reference = study_reference(study, context)
    shape = tuple(context.example.shape)
    return pooled([measure_onnx(onnx_bytes, shape, context.target, reference) for _ in range(EXPORT_MEASUREMENTS)])


@dataclass(frozen=True)
class _Scored:
    """One written ONNX file of an export: its latency (the trials' harness) and test predictions and Dice."""

    file: str
    precision: str
    onnx: bytes
    stats: LatencyStats
    pred: torch.Tensor
    test: Scores

    def figures(self) -> dict:
        """The model card's figures of this file."""
        return {"dice": self.test.mean, "dice_per_class": self.test.per_class, "dice_split": "test",
                "latency": self.stats.to_dict(), "latency_clock": self.stats.clock, "file_size": len(self.onnx),
                "sha256": hashlib.sha256(self.onnx).hexdigest()}


def _scored(file: str, onnx_bytes: bytes, study: optuna.Study, context: Context, folder: Path,
            precision: str = "fp32") -> _Scored:
    """Write ``folder/file``, then score it on the test split and re-measure it."""
    (folder / file).write_bytes(onnx_bytes)
    pred = ort_labels(onnx_bytes, context.data.test.images)
    test = split_scores(pred, context.data.test, context.data.class_names)
    return _Scored(file, precision, onnx_bytes, _remeasure(onnx_bytes, study, context), pred, test)


def _int8_model(fp32_bytes: bytes, study: optuna.Study, context: Context, folder: Path) -> tuple[Int8Model, _Scored]:
    """Quantize the fp32 model (:func:`~.quantize.quantize_int8`, on training slices), write
    ``folder/model.int8.onnx``, score and re-measure it."""
    model = quantize_int8(fp32_bytes, calibration_slices(context.data.train.images), reduce_range_for(target_vnni(context.target)))
    return model, _scored(INT8_FILE, model.onnx, study, context, folder, "int8")


def _int8_section(model: Int8Model, int8: _Scored, fp32: _Scored, vnni: bool | None) -> dict:
    """The card's ``int8`` section: the INT8 model's test Dice and latency (same harness and
    reference as fp32's) beside fp32's, and how it was quantized.

    Weights use 7 bits (reduce_range) unless this CPU is known to have VNNI (``vnni``); a
    remote target's flags are unknown, so it gets them too. ``faster`` says whether INT8
    measured faster than fp32; ``summary`` says so in one line.
    """
    ratio = fp32.stats.median_ms / int8.stats.median_ms
    compared = (f"INT8 {int8.stats.median_ms:.2f} ms against fp32 {fp32.stats.median_ms:.2f} ms, "
                f"test Dice {int8.test.mean:.3f} against {fp32.test.mean:.3f}")
    faster = int8.stats.median_ms < fp32.stats.median_ms
    return {
        "precision": "int8", "file": INT8_FILE, **int8.figures(), "dice_change": int8.test.mean - fp32.test.mean,
        "agreement": float((int8.pred == fp32.pred).double().mean()), "fp32_dice": fp32.test.mean,
        "fp32_latency_ms": fp32.stats.median_ms, "speedup_over_fp32": ratio, "faster": faster,
        "summary": (f"INT8 is {ratio:.2f}x faster than fp32: {compared}" if faster else
                    f"INT8 is SLOWER than fp32 on this CPU ({compared})"),
        "vnni": vnni, **model.to_dict(),
    }


def _max_difference(net: torch.nn.Module, onnx_bytes: bytes, images: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch's and ONNX Runtime's logits."""
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    with torch.inference_mode():
        return max(float(np.abs(net(image[None]).numpy() - session.run(None, {name: image[None].numpy()})[0]).max())
                   for image in images)


def _per_volume(context: Context, net_pred: torch.Tensor, base_pred: torch.Tensor) -> dict:
    """Dice and HD95 per test volume for both models, their means and stds (:mod:`..training.metrics`)."""
    data = context.data
    exported = per_volume(net_pred, data.test, data.class_names)
    baseline = per_volume(base_pred, data.test, data.class_names)
    return {"unit": data.spacing_unit, "exported": summary(exported), "baseline": summary(baseline),
            "volumes": [{"volume": e.volume, "exported": e.to_dict(), "baseline": b.to_dict()}
                        for e, b in zip(exported, baseline)]}


def _samples(context: Context, net_pred: torch.Tensor, base_pred: torch.Tensor, volumes: list[dict]) -> list[QualitativeSample]:
    """The worst test volumes (lowest mean Dice of the exported model), each by its slice with
    the most foreground, with truth and both models' predictions."""
    data: SegmentationData = context.data
    worst = sorted(volumes, key=lambda v: v["exported"]["mean_dice"])[:SAMPLE_COUNT]
    names = np.asarray(data.test.volumes)
    samples = []
    for volume in worst:
        rows = np.flatnonzero(names == volume["volume"])
        i = int(rows[np.argmax([(data.test.masks[r] > 0).sum().item() for r in rows])])
        truth = data.test.masks[i]
        samples.append(QualitativeSample(
            image=data.test.images[i, 0].numpy(), truth=truth.numpy(), baseline=base_pred[i].numpy(),
            exported=net_pred[i].numpy(), dice_baseline=_dice(base_pred[i], truth, data),
            dice_exported=_dice(net_pred[i], truth, data), label=f"{volume['volume']} (slice {i - rows[0] + 1} of {len(rows)})"))
    return samples


def _dice(pred: torch.Tensor, truth: torch.Tensor, data: SegmentationData) -> float:
    return scores_from_counts(dice_counts(pred, truth, data.num_classes), data.class_names).mean


def no_feasible_message(study: optuna.Study, budget_ms: float) -> str:
    """Why nothing was exported, the fastest latency seen, and the command to search again."""
    measured = [t for t in study.get_trials(deepcopy=False) if "latency_ms" in t.user_attrs]
    if not measured:
        return f"no trial of {study.study_name!r} was measured yet: run autosculpt resume {study.study_name}"
    fastest, command = fastest_and_command(measured)
    return (f"no fine-tuned trial within {ms(budget_ms)}: the fastest, trial {fastest.number}, took "
            f"{ms(fastest.user_attrs['latency_ms'])}. Search with a larger budget: {command}")
