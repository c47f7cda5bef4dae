"""State dicts as Optuna artifacts: the baseline of a study, each trial's fine-tuned
network, the polished winner. Written whole, read with ``torch.load(weights_only=True)``:
nothing is unpickled beyond tensors."""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna
import torch


def upload_state_dict(store, study_or_trial, net: torch.nn.Module, file_name: str) -> str:
    """Store ``net``'s state dict as an Optuna artifact of a study or trial; its artifact id."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / file_name
        torch.save(net.state_dict(), path)
        return optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study_or_trial)


def download_state_dict(store, artifact_id: str) -> dict[str, torch.Tensor]:
    """The state dict stored as artifact ``artifact_id`` (tensors only)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.pt"
        optuna.artifacts.download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(path))
        return torch.load(path, weights_only=True)
