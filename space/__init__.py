"""What can be searched and how a point of the space becomes a network.

- the U-Net family and its presets (:mod:`.unet`), any user ``nn.Module``
  (:func:`load_user_model`) and an nnU-Net trained-model folder (:func:`load_nnunet_model`);
- the search space (:class:`SearchSpace`, TOML presets ``per-layer``, ``per-stage``,
  ``uniform``) whose trials sample :class:`Recipe` objects, and the study's
  :func:`warm_start` (the uniform and capped shapes every study tries first);
- structural pruning over Torch-Pruning: :func:`survey_groups` (what prunes, what is
  kept whole), :func:`layer_groups`, :func:`depth_of` (what depth can go), :func:`channel_plan`,
  :func:`apply_recipe`, :func:`rebuild`, and cheap size :func:`figures`.
"""

from ._figures import Figures, figures
from ._depth import Depth, depth_of
from ._prune import GroupSurvey, apply_recipe, layer_groups, rebuild, survey_groups
from ._recipe import LayerGroup, Recipe, channel_plan
from ._space import SearchSpace
from ._warm import warm_start
from ._nnunet import NnunetFold, is_nnunet_folder, load_nnunet_model, nnunet_fold, write_nnunet_folder
from ._usermodel import load_user_model, load_weights, model_digest
from .unet import PRESETS, UNet, UNetConfig, count_parameters, preset_config, round_channels

__all__ = [
    "PRESETS",
    "Depth",
    "Figures",
    "GroupSurvey",
    "LayerGroup",
    "NnunetFold",
    "Recipe",
    "SearchSpace",
    "UNet",
    "UNetConfig",
    "apply_recipe",
    "channel_plan",
    "count_parameters",
    "depth_of",
    "figures",
    "is_nnunet_folder",
    "layer_groups",
    "load_nnunet_model",
    "load_user_model",
    "load_weights",
    "model_digest",
    "nnunet_fold",
    "preset_config",
    "rebuild",
    "round_channels",
    "survey_groups",
    "warm_start",
    "write_nnunet_folder",
]
