"""An nnU-Net v2 trained-model folder as a model: its plans build the network, its checkpoint
holds the weights.

A trained-model folder is ``nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION/``
with ``plans.json``, ``dataset.json`` and ``fold_N/checkpoint_final.pth``. The network is
what nnU-Net's ``get_network_from_plans`` builds: the configuration's
``architecture.network_class_name`` called with its ``arch_kwargs`` (the names listed in
``_kw_requires_import`` resolved to classes), the data set's input channels and one
output per label. It is built with deep supervision, every head kept consistent when
pruned, and seen through its full-resolution output (:func:`first_output`), as nnU-Net
predicts. The checkpoint is read with ``torch.load(weights_only=True)``; nnunetv2 itself
is not needed, dynamic-network-architectures is.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import pydoc
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from ._errors import brief
from ._usermodel import first_output

CHECKPOINT = "checkpoint_final.pth"
_ENCODER_STAGE = re.compile(r"encoder\.(?:stages\.(\d+)|stem)\.")
_DECODER_STAGE = re.compile(r"decoder\.(?:stages|transpconvs)\.(\d+)(?:\.|$)")
# Where a plan's classes may come from: nnU-Net's networks and PyTorch's layers, nothing else.
_TRUSTED_MODULES = ("dynamic_network_architectures.", "torch.nn.")


@dataclass(frozen=True)
class NnunetFold:
    """One fold of an nnU-Net trained-model folder: ``folder`` holds the plans, ``fold`` the checkpoint."""

    folder: Path
    fold: int
    configuration: str
    config: dict  # the configuration's plan, what it inherits filled in
    plans: dict
    dataset: dict

    @property
    def checkpoint(self) -> Path:
        return self.folder / f"fold_{self.fold}" / CHECKPOINT

    @property
    def spec(self) -> str:
        """The model spec that names this fold: its ``fold_N`` folder."""
        return str(self.folder / f"fold_{self.fold}")

    @property
    def dataset_name(self) -> str:
        return self.plans.get("dataset_name", self.folder.parent.name)

    @property
    def architecture(self) -> dict:
        return self.config["architecture"]

    @property
    def stride(self) -> int:
        """How many pixels of input each output pixel of the deepest stage spans: sizes must be multiples."""
        strides = self.architecture["arch_kwargs"]["strides"]
        return math.prod(max(s) if isinstance(s, (list, tuple)) else s for s in strides)


def nnunet_stages(names: list[str]) -> dict[str, int]:
    """nnU-Net's stage of each layer group of a PlainConvUNet or ResidualEncoderUNet: ``encoder.stages.N``
    (and the stem) are stage N; ``decoder.stages.J`` and ``decoder.transpconvs.J`` work at the resolution
    of stage ``n_stages - 2 - J``. Every layer of a stage has that stage's ``features_per_stage``."""
    encoder = {name: int(m.group(1) or 0) for name in names if (m := _ENCODER_STAGE.match(name))}
    decoder = {name: int(m.group(1)) for name in names if (m := _DECODER_STAGE.match(name))}
    if other := [name for name in names if name not in encoder and name not in decoder]:
        raise UserError(f"the nnunet-stages space needs nnU-Net's encoder.stages.N and decoder.stages.N layers, "
                        f"and {other[0]} is neither: search this model per-layer")
    n_stages = max([s + 1 for s in encoder.values()] + [j + 2 for j in decoder.values()])
    return {**encoder, **{name: n_stages - 2 - j for name, j in decoder.items()}}


def is_nnunet_folder(spec: str) -> bool:
    """Whether ``spec`` names an nnU-Net trained-model folder or one of its ``fold_N`` folders."""
    path = Path(spec)
    return path.is_dir() and ((path / "plans.json").is_file() or (path.parent / "plans.json").is_file())


def nnunet_fold(spec: str, fold: int | None = None) -> NnunetFold:
    """The fold ``spec`` names: a trained-model folder (``fold``, else its only fold, else 0)
    or a ``fold_N`` folder. Anything autosculpt cannot search (no checkpoint, a 3d
    configuration, a cascade, region-based labels, an unknown network) raises :class:`UserError`."""
    path = Path(spec)
    if re.fullmatch(r"fold_\d+", path.name) and (path.parent / "plans.json").is_file():
        given = int(path.name.split("_")[1])
        if fold is not None and fold != given:
            raise UserError(f"--fold {fold} contradicts {spec}: name the trained-model folder, or drop --fold")
        path, fold = path.parent, given
    plans, dataset = _read_json(path / "plans.json"), _read_json(path / "dataset.json")
    fold = _choose_fold(path, fold)
    configuration = _configuration(path, plans)
    chosen = NnunetFold(path, fold, configuration, _resolved(plans, configuration), plans, dataset)
    _check_searchable(chosen)
    return chosen


def load_nnunet_model(spec: str) -> nn.Module:
    """The network of the fold ``spec`` names (see :func:`nnunet_fold`), with its trained weights."""
    fold = nnunet_fold(spec)
    model = _build(fold)
    state = _network_weights(fold.checkpoint)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        message = f"{fold.checkpoint} does not fit the network its plans describe ({brief(err)})"
        raise UserError(f"{message}: use the plans.json the checkpoint was trained with") from err
    return model


def nnunet_digest(spec: str) -> str:
    """sha256 over the fold's plans and checkpoint: what a study checks its workers load."""
    fold = nnunet_fold(spec)
    digest = hashlib.sha256((fold.folder / "plans.json").read_bytes())
    with open(fold.checkpoint, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} not found: give the trained-model folder that nnU-Net wrote "
                        "(nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION)") from None
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({brief(err)}): restore the file nnU-Net wrote") from err
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object: restore the file nnU-Net wrote")
    return data


def _choose_fold(folder: Path, fold: int | None) -> int:
    folds = sorted(int(p.parent.name.split("_")[1]) for p in folder.glob(f"fold_*/{CHECKPOINT}")
                   if re.fullmatch(r"fold_\d+", p.parent.name))
    if not folds:
        raise UserError(f"{folder} has no fold_N/{CHECKPOINT}: finish training a fold (nnUNetv2_train ...) first")
    if fold is None:
        return folds[0] if len(folds) == 1 else (0 if 0 in folds else folds[0])
    if fold not in folds:
        raise UserError(f"{folder} has no fold {fold} with {CHECKPOINT}: choose --fold from {', '.join(map(str, folds))}")
    return fold


def _configuration(folder: Path, plans: dict) -> str:
    """The configuration of the folder's name (``TRAINER__PLANS__CONFIGURATION``), resolved in the plans."""
    name = folder.name.split("__")[-1]
    configurations = plans.get("configurations")
    if not isinstance(configurations, dict) or name not in configurations:
        known = ", ".join(configurations) if isinstance(configurations, dict) else "none"
        raise UserError(f"{folder.name} names configuration {name!r}, which its plans.json lacks (it has {known}): "
                        "give the folder nnU-Net trained")
    return name


def _resolved(plans: dict, name: str) -> dict:
    """Configuration ``name`` with what it ``inherits_from`` filled in, as nnU-Net resolves it."""
    configuration = plans["configurations"][name]
    parent = configuration.get("inherits_from")
    return {**_resolved(plans, parent), **configuration} if parent else configuration


def _check_searchable(fold: NnunetFold) -> None:
    configuration, where = fold.config, fold.folder.name
    if configuration.get("previous_stage"):
        raise UserError(f"{where} is a cascade stage (it needs {configuration['previous_stage']}'s predictions): "
                        "autosculpt searches 2d configurations; train and give nnU-Net's 2d configuration")
    if "regions_class_order" in fold.dataset:
        raise UserError(f"{where} is trained on region-based labels: autosculpt searches one label per pixel; "
                        "train nnU-Net without regions")
    architecture = configuration.get("architecture") or {}
    kwargs = architecture.get("arch_kwargs") or {}
    if kwargs.get("conv_op") != "torch.nn.modules.conv.Conv2d":
        raise UserError(f"{where} is a {len(configuration.get('patch_size', ())) or 'non-2'}d configuration "
                        f"({kwargs.get('conv_op')}): autosculpt searches 2d configurations; "
                        "train nnU-Net's 2d configuration (nnUNetv2_train DATASET 2d FOLD)")


def _locate(name: str | None) -> type | None:
    """The class a plan names, from dynamic-network-architectures or torch.nn only."""
    if name is None:
        return None
    if not name.startswith(_TRUSTED_MODULES):
        raise UserError(f"plans.json names {name}: autosculpt builds only dynamic-network-architectures' networks "
                        "from torch.nn layers")
    found = pydoc.locate(name)
    if found is None:
        package = "dynamic-network-architectures==0.4.4"
        raise UserError(f"cannot import {name}: pip install --no-deps {package} einops")
    return found


def _build(fold: NnunetFold) -> nn.Module:
    """The network nnU-Net builds from the plan, with deep supervision, seen through its first output."""
    architecture = fold.architecture
    kwargs = {**architecture["arch_kwargs"], "deep_supervision": True}
    for key in architecture.get("_kw_requires_import", ()):
        kwargs[key] = _locate(kwargs.get(key))
    cls = _locate(architecture["network_class_name"])
    channels = len(fold.dataset.get("channel_names") or fold.dataset.get("modality") or {})
    classes = len(fold.dataset.get("labels") or {})
    try:
        return first_output(cls)(input_channels=channels, num_classes=classes, **kwargs)
    except Exception as err:  # the plan's arguments may not fit the installed class
        message = f"cannot build {architecture['network_class_name']} from {fold.folder / 'plans.json'} ({brief(err)})"
        raise UserError(f"{message}: install dynamic-network-architectures==0.4.4") from err


def _read_checkpoint(path: Path) -> dict:
    """nnU-Net's checkpoint, read with ``weights_only=True``. Its training log holds numpy scalars
    (float32 Dice and losses), so numpy's scalar and dtype reconstructors are allowed: they build
    a number from a dtype and its bytes and run nothing else."""
    numpy_scalars = [np._core.multiarray.scalar, np.dtype, *(type(np.dtype(t)) for t in ("f4", "f8", "i4", "i8", "?"))]
    try:
        with torch.serialization.safe_globals(numpy_scalars):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"cannot read {path} ({brief(err)}): give the checkpoint nnU-Net wrote") from err
    if not isinstance(checkpoint, dict):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}: give the checkpoint_final.pth nnU-Net wrote")
    return checkpoint


def _network_weights(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = _read_checkpoint(path)
    state = checkpoint.get("network_weights")
    if not isinstance(state, dict):
        raise UserError(f"{path} has no network_weights: give the checkpoint_final.pth nnU-Net wrote")
    return {key.removeprefix("_orig_mod."): value for key, value in state.items()}


def write_nnunet_folder(fold: NnunetFold, network: nn.Module, out: Path) -> Path:
    """Write ``network``, pruned from ``fold``'s, as an nnU-Net trained-model folder in ``out``: ``plans.json``
    with its ``features_per_stage``, ``dataset.json`` and ``fold_N/checkpoint_final.pth`` in nnU-Net's layout
    (the original checkpoint's trainer, mirroring axes and init arguments, the new plans and weights).

    A network whose layers of one stage kept different channels is no network the plans can describe:
    :class:`UserError` (search with the ``nnunet-stages`` space to get only such networks).
    """
    features = _features_per_stage(network)
    plans = copy.deepcopy(fold.plans)
    config = copy.deepcopy(fold.config)
    config.pop("inherits_from", None)
    config["architecture"]["arch_kwargs"]["features_per_stage"] = features
    plans["configurations"] = {fold.configuration: config}
    pruned = NnunetFold(out, fold.fold, fold.configuration, config, plans, fold.dataset)
    try:
        _build(pruned).load_state_dict(network.state_dict())
    except RuntimeError as err:
        raise UserError(f"the pruned network is not one nnU-Net's plans describe ({brief(err)}): "
                        "only ONNX can describe it; search with --space nnunet-stages") from err
    checkpoint = _read_checkpoint(fold.checkpoint)
    init_args = {**checkpoint.get("init_args", {}), "plans": plans, "configuration": fold.configuration,
                 "fold": fold.fold, "dataset_json": fold.dataset}
    (out / f"fold_{fold.fold}").mkdir(parents=True, exist_ok=True)
    (out / "plans.json").write_text(json.dumps(plans, indent=2))
    (out / "dataset.json").write_text(json.dumps(fold.dataset, indent=2))
    torch.save({key: value for key, value in checkpoint.items() if key not in ("optimizer_state", "grad_scaler_state")}
               | {"network_weights": network.state_dict(), "init_args": init_args, "optimizer_state": None,
                  "grad_scaler_state": None}, pruned.checkpoint)
    return out


def _features_per_stage(network: nn.Module) -> list[int]:
    """The output channels of each nnU-Net stage's convolutions; UserError where a stage's disagree."""
    layers = {name: module for name, module in network.named_modules()
              if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and "seg_layers" not in name}
    stages = nnunet_stages(list(layers))
    widths: dict[int, set[int]] = {}
    for name, stage in stages.items():
        layer = layers[name]
        widths.setdefault(stage, set()).add(layer.out_channels)
    if mixed := [stage for stage, found in sorted(widths.items()) if len(found) > 1]:
        raise UserError(f"stage {mixed[0]} of the pruned network has layers of {sorted(widths[mixed[0]])} channels, "
                        "and nnU-Net's plans give a stage one width: only ONNX can describe it; "
                        "search with --space nnunet-stages")
    return [widths[stage].pop() for stage in sorted(widths)]
