"""nnU-Net's folders as nnU-Net v2 writes them: a raw data set and a trained-model folder.

The raw data set holds the generated cardiac slices as one NIfTI volume per patient
(``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``, ``dataset.json``); the
trained-model folder holds ``plans.json``, ``dataset.json`` and
``fold_N/checkpoint_final.pth`` in nnU-Net's checkpoint layout, for a small 2d plan.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nibabel
import numpy as np
import torch

from autosculpt.search.data import load_data

LABELS = {"background": 0, "RV": 1, "MLV": 2, "LVC": 3}
DATASET_JSON = {"channel_names": {"0": "cineMRI"}, "labels": LABELS, "numTraining": 8, "file_ending": ".nii.gz"}
SPACING = (1.5, 1.5, 10.0)

_CONV_OP_KEYS = ["conv_op", "norm_op", "dropout_op", "nonlin"]
PLAIN = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {
        "n_stages": 4, "features_per_stage": [8, 16, 32, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
        "kernel_sizes": [[3, 3]] * 4, "strides": [[1, 1], [2, 2], [2, 2], [2, 2]], "n_conv_per_stage": [2] * 4,
        "n_conv_per_stage_decoder": [2] * 3, "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    },
    "_kw_requires_import": _CONV_OP_KEYS,
}
RESENC = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
    "arch_kwargs": {**{k: v for k, v in PLAIN["arch_kwargs"].items() if k != "n_conv_per_stage"},
                    "n_blocks_per_stage": [1, 2, 2, 2], "n_conv_per_stage_decoder": [1] * 3},
    "_kw_requires_import": _CONV_OP_KEYS,
}


def write_raw_dataset(root: Path, patients: int = 8, size: int = 32) -> Path:
    """The generated set as nnU-Net's raw data set: one volume per patient, slices along the third axis."""
    data = load_data(None, image_size=size, seed=0, patients=patients)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([*SPACING, 1.0])
    for split in (data.train, data.val, data.test):
        for patient in sorted(set(split.groups)):
            rows = [i for i, group in enumerate(split.groups) if group == patient]
            image = split.images[rows, 0].numpy().transpose(1, 2, 0).astype(np.float32)
            mask = split.masks[rows].numpy().transpose(1, 2, 0).astype(np.uint8)
            nibabel.Nifti1Image(image, affine).to_filename(str(root / "imagesTr" / f"{patient}_0000.nii.gz"))
            nibabel.Nifti1Image(mask, affine).to_filename(str(root / "labelsTr" / f"{patient}.nii.gz"))
    (root / "dataset.json").write_text(json.dumps({**DATASET_JSON, "numTraining": patients}))
    return root


def plans(architecture: dict, configuration: str = "2d", dataset_name: str = "Dataset027_Heart") -> dict:
    """A plans.json with one configuration, in nnU-Net v2's layout."""
    return {
        "dataset_name": dataset_name, "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [10.0, 1.5, 1.5],
        "original_median_shape_after_transp": [3, 32, 32], "image_reader_writer": "NibabelIOWithReorient",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {configuration: {
            "data_identifier": f"nnUNetPlans_{configuration}", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 12, "patch_size": [32, 32], "median_image_size_in_voxels": [32.0, 32.0], "spacing": [1.5, 1.5],
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": copy.deepcopy(architecture), "batch_dice": True,
        }},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 4.0, "mean": 0.5, "median": 0.4, "min": -1.0, "percentile_00_5": -0.9, "percentile_99_5": 3.5, "std": 0.8}},
    }


def write_trained_folder(results: Path, plan: dict, network_weights: dict, folds=(0,), configuration: str = "2d",
                         dataset: dict | None = None) -> Path:
    """``results/<dataset>/nnUNetTrainer__nnUNetPlans__<configuration>`` with a checkpoint per fold."""
    folder = results / plan["dataset_name"] / f"nnUNetTrainer__nnUNetPlans__{configuration}"
    folder.mkdir(parents=True)
    dataset = dataset or DATASET_JSON
    (folder / "plans.json").write_text(json.dumps(plan, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    for fold in folds:
        (folder / f"fold_{fold}").mkdir()
        checkpoint = {
            "network_weights": network_weights, "optimizer_state": {"state": {}, "param_groups": [{"lr": 0.01}]},
            # nnU-Net's training log holds numpy scalars (float32), not Python floats
            "grad_scaler_state": None, "logging": {"mean_fg_dice": [np.float32(0.5), np.float32(0.6)],
                                                   "epoch_start_timestamps": [1.0, 2.0]},
            "_best_ema": np.float32(0.6), "current_epoch": 2,
            "init_args": {"plans": plan, "configuration": configuration, "fold": fold, "dataset_json": dataset,
                          "device": torch.device("cpu")},
            "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1),
        }
        torch.save(checkpoint, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder
