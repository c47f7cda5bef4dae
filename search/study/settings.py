"""A study's settings: what ``search`` was given, stored with the study so ``resume`` and workers reuse it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from ...errors import UserError
from ...space import SearchSpace, model_digest
from ..latency import Target

PRECISIONS = ("fp32", "int8")  # deployed precisions: fp32 ONNX, or INT8 QDQ ONNX (:mod:`..quantize`)

SETTINGS_ATTR = "settings"
WIDTH_FLOOR_ATTR = "width_floor_ms"  # the narrowest width-only network's latency, where measured (:mod:`.study`)
AUTO_SPACE = "auto"  # the default space: WIDTH_SPACE, or DEPTH_SPACE past the width floor (:mod:`.study`)
WIDTH_SPACE = "per-layer"
DEPTH_SPACE = "per-layer-depth"
POLISH_ATTR = "polish"  # the finalists' polish and its winner (:mod:`.polish`)
KEPT_WHOLE_ATTR = "kept_whole"  # {group name: why it cannot be pruned}: the groups a study leaves whole


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to run trials of one study, JSON-safe.

    ``trials`` and ``timeout_s`` bound the whole study (all workers together);
    ``seed`` fixes the data and baseline; each worker's sampler seed is derived from it
    and the worker's index so workers never repeat each other's startup trials. The
    budget is ``budget_ms`` or the baseline's latency over ``speedup``: a study stores
    both once it is created (``budget_ms`` resolved by calibration). ``epochs`` is the
    most a trial fine-tunes (the pruner stops most earlier); the ``finalists`` best trials
    within budget (None: one, or more when the trials' scores have not settled:
    :func:`~.best.finalist_count`) are polished for ``polish_epochs`` (default twice ``epochs``, longer for tiny
    networks: :func:`~.polish.polish_epochs`) and the best
    of them after its polish is the answer. The verdict fails a model that
    loses more than ``max_dice_loss`` percent of the baseline's test Dice.
    ``group_by`` is the regex that groups an images/ folder's files into patients
    (None: by subfolder, or by file name up to the first ``_``).
    ``model_sha256`` is the digest of the file defining a user's model class when the
    study was created: workers refuse to import a different one. ``device`` is where each
    worker trains (``auto``: its CUDA GPU if it has one); latency is always measured on
    the target CPU. ``precisions`` are the deployed precisions a trial may take ("fp32",
    "int8"): with several, the precision is a search dimension and an INT8 candidate is
    measured, projected and scored as INT8 (ONNX Runtime targets only).
    ``balance_classes``: fine-tunes (trials and the polish) weigh the cross-entropy
    against class imbalance (:func:`autosculpt.search.training.train.finetune_schedule`); a
    study stored without it predates that and keeps fine-tuning unweighted on resume.
    ``crop``: the side of the random patches the baseline and fine-tunes train on (scoring
    is on whole slices); None chooses by the slices' size
    (:func:`autosculpt.search.training.train.training_crop`), 0 trains on whole slices.
    ``epoch_slices``: how many training slices a trial's fine-tune epoch draws at most (None
    or 0: all; the polish always takes all).
    """

    budget_ms: float | None = None
    speedup: float | None = None
    model: str = "unet"
    model_sha256: str | None = None
    weights: str | None = None
    data: str | None = None
    image_size: int = 96
    patients: int | None = None
    group_by: str | None = None
    space: str = AUTO_SPACE
    space_spec: dict = field(default_factory=dict)
    target: dict = field(default_factory=dict)
    seed: int = 0
    trials: int | None = 12
    timeout_s: float | None = None
    epochs: int = 8
    polish_epochs: int | None = None
    finalists: int | None = None
    max_dice_loss: float = 5.0
    baseline_epochs: int | None = None
    distill: float = 0.0
    warm_start: int = 4
    preset: str = "default"
    device: str = "auto"
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    balance_classes: bool = True
    crop: int | None = None
    epoch_slices: int | None = None

    def __post_init__(self) -> None:
        if self.budget_ms is None and self.speedup is None:
            raise UserError("no latency budget: pass --speedup X (e.g. 15) or --budget-ms MS (e.g. 20)")
        if self.budget_ms is not None and not self.budget_ms > 0:
            raise UserError(f"budget {self.budget_ms} ms is not a positive number: pass e.g. --budget-ms 20")
        if self.speedup is not None and not self.speedup >= 1:
            raise UserError(f"--speedup {self.speedup} must be at least 1: e.g. --speedup 15 asks for 15x faster")
        if not 0 <= self.max_dice_loss < 100:
            raise UserError(f"--max-dice-loss {self.max_dice_loss} must be a percentage in [0, 100), e.g. 5")
        if self.trials is not None and self.trials < 1:
            raise UserError(f"--trials {self.trials} must be at least 1")
        if self.epochs < 1 or (self.polish_epochs is not None and self.polish_epochs < 0):
            raise UserError("--epochs must be at least 1 and --polish-epochs at least 0")
        if self.finalists is not None and self.finalists < 1:
            raise UserError(f"--finalists {self.finalists} must be at least 1 (the best trial)")
        if self.crop is not None and (self.crop < 0 or self.crop % 16):
            raise UserError(f"--crop {self.crop}: give a multiple of 16 (e.g. 128), or 0 to train on whole slices")
        if self.epoch_slices is not None and self.epoch_slices < 0:
            raise UserError(f"--epoch-slices {self.epoch_slices}: give a number of slices, or 0 for all of them")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"--device {self.device!r}: choose auto, cpu or cuda")
        self._check_precisions()

    def _check_precisions(self) -> None:
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown or not self.precisions:
            raise UserError(f"--precision {','.join(self.precisions)}: give one or more of {', '.join(PRECISIONS)}, "
                            "comma-separated, e.g. --precision fp32,int8")
        if "int8" in self.precisions and self.target.get("runtime", "ort") != "ort":
            raise UserError("--precision int8 is measured in ONNX Runtime: drop --runtime torch or the int8 precision")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Settings":
        known = {f.name for f in fields(cls)}
        return cls(**{"balance_classes": False, **{k: v for k, v in data.items() if k in known}})

    @property
    def polish(self) -> int:
        """Epochs of each finalist's polish."""
        return 2 * self.epochs if self.polish_epochs is None else self.polish_epochs

    def conflicts(self, other: "Settings", names: set[str]) -> list[str]:
        """Names in ``names`` whose value differs between ``self`` and ``other``."""
        return [name for name in sorted(names) if getattr(self, name) != getattr(other, name)]


# Run presets: bundles of defaults. ``smoke`` is tiny data, a tiny model, a very short
# fine-tune and short latency measurements (a fifth of a second each, not one to three): a
# 3-trial search end to end in about half a minute, for tests and demos, never for figures.
PRESETS: dict[str, dict] = {
    "default": {},
    "smoke": {
        "model": "unet-tiny",
        "image_size": 32,
        "patients": 8,
        "trials": 3,
        "epochs": 3,
        "polish_epochs": 3,
        "finalists": 1,
        "baseline_epochs": 40,
        "warm_start": 1,
        "target": Target(min_runs=10, max_seconds=0.2, min_seconds=0.1, warmup=2).to_dict(),
    },
}


def merged_target(base: dict, given: dict) -> dict:
    """The latency target ``base`` (a stored or preset target) with the fields ``given`` set over it."""
    return Target.from_dict({**base, **given}).to_dict()


def with_preset(preset: str, given: dict) -> tuple[Settings, list[str]]:
    """Settings from a run preset overridden by what the user ``given`` (None = not given);
    a given ``target`` may hold some of Target's fields, set over the preset's target.

    Returns the settings and the names of those that fell back to a default, for the
    single warning the CLI prints at the start.
    """
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    chosen = {k: v for k, v in given.items() if v is not None}
    values = {**PRESETS[preset], **chosen, "preset": preset}
    values.setdefault("space_spec", SearchSpace.load(WIDTH_SPACE if values.get("space", AUTO_SPACE) == AUTO_SPACE else values["space"]).to_dict())
    values["target"] = merged_target(PRESETS[preset].get("target", {}), chosen.get("target", {}))
    values.setdefault("model_sha256", model_digest(values.get("model", "unet")))
    settings = Settings(**values)
    hidden = ("preset", "space_spec", "budget_ms", "speedup", "model_sha256")
    defaulted = [f.name for f in fields(Settings) if f.name not in chosen and f.name not in hidden]
    return settings, defaulted

