"""What can be searched and how a point of the space becomes a network.

- the U-Net family and its presets (:mod:`.unet`), and any user ``nn.Module``
  (:func:`load_user_model`);
- the search space (:class:`SearchSpace`, TOML presets ``per-layer``, ``per-stage``,
  ``uniform``) whose trials sample :class:`Recipe` objects, and the study's
  :func:`warm_start` (the uniform and capped shapes every study tries first);
- structural pruning over Torch-Pruning: :func:`survey_groups` (what prunes, what is
  kept whole), :func:`layer_groups`, :func:`channel_plan`,
  :func:`apply_recipe`, :func:`rebuild`, and cheap size :func:`figures`.
"""

from ._figures import Figures, figures
from ._prune import GroupSurvey, apply_recipe, layer_groups, rebuild, survey_groups
from ._recipe import LayerGroup, Recipe, channel_plan
from ._space import SearchSpace
from ._warm import warm_start
from ._usermodel import load_user_model, model_digest
from .unet import PRESETS, UNet, UNetConfig, count_parameters, preset_config, round_channels

__all__ = [
    "PRESETS",
    "Figures",
    "GroupSurvey",
    "LayerGroup",
    "Recipe",
    "SearchSpace",
    "UNet",
    "UNetConfig",
    "apply_recipe",
    "channel_plan",
    "count_parameters",
    "figures",
    "layer_groups",
    "load_user_model",
    "model_digest",
    "preset_config",
    "rebuild",
    "round_channels",
    "survey_groups",
    "warm_start",
]
