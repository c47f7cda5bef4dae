"""The verdict on an exported model: within budget, and close enough to the baseline's Dice?

Export re-measures the model with the trials' harness and scores it on the test split;
:func:`judge` compares both with what the user asked for and says so in one line. When
the answer is no, the line also gives the trade-off the study did find: the best Dice
within the budget, and the smallest latency at which a trial kept the allowed Dice.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import optuna
from optuna.trial import TrialState

from ...units import ms

EXIT_VERDICT_FAILED = 3  # the model was written, but misses the budget or the allowed Dice loss


@dataclass(frozen=True)
class Verdict:
    """Whether an exported model meets the budget (its median latency) and the allowed Dice loss."""

    budget_ms: float
    median_ms: float
    p90_ms: float
    dice: float
    baseline_dice: float
    max_dice_loss_pct: float
    trade_off: str

    @property
    def dice_loss_pct(self) -> float:
        return 100.0 * (1.0 - self.dice / self.baseline_dice) if self.baseline_dice > 0 else 0.0

    @property
    def within_budget(self) -> bool:
        return self.median_ms <= self.budget_ms

    @property
    def ok(self) -> bool:
        return self.within_budget and self.dice_loss_pct <= self.max_dice_loss_pct

    def line(self) -> str:
        """One line for the terminal and the report's headline."""
        figures = (f"{self.median_ms:.2f} ms median (p90 {self.p90_ms:.2f}) for a {ms(self.budget_ms)} budget; "
                   f"test Dice {self.dice:.3f} vs the baseline's {self.baseline_dice:.3f} ({-self.dice_loss_pct:+.1f} %)")
        if self.ok:
            return f"budget met: {figures}"
        misses = [] if self.within_budget else ["over budget"]
        if self.dice_loss_pct > self.max_dice_loss_pct:
            misses.append(f"loses more than {self.max_dice_loss_pct:g} % Dice")
        return f"budget NOT met ({', '.join(misses)}): {figures}. {self.trade_off}"

    def to_dict(self) -> dict:
        return {**asdict(self), "dice_loss_pct": self.dice_loss_pct, "within_budget": self.within_budget,
                "ok": self.ok, "line": self.line()}


def trade_off(study: optuna.Study, budget_ms: float, baseline_dice: float, max_dice_loss_pct: float) -> str:
    """What the study found around the budget, on validation Dice, with the command to get it.

    E.g. "Within 2 ms the best keeps val Dice 0.30; 3.1 ms kept 0.95: autosculpt search --budget-ms 3.2".
    """
    tuned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
             if t.user_attrs.get("finetuned") and "latency_ms" in t.user_attrs]
    within = [t for t in tuned if t.user_attrs["latency_ms"] <= budget_ms]
    best = max((t.values[0] for t in within), default=None)
    text = (f"Within {ms(budget_ms)} the best keeps val Dice {best:.3f}" if best is not None
            else f"No fine-tuned trial is within {ms(budget_ms)}")
    good = [t for t in tuned if t.values[0] >= baseline_dice * (1 - max_dice_loss_pct / 100)]
    if not good:
        return f"{text}; no trial kept the allowed Dice: try more --trials or --epochs."
    fastest, command = fastest_and_command(good)
    return f"{text}; {ms(fastest.user_attrs['latency_ms'])} kept {fastest.values[0]:.3f}: {command}"


def fastest_and_command(trials: list[optuna.trial.FrozenTrial]) -> tuple[optuna.trial.FrozenTrial, str]:
    """The fastest of ``trials`` (each stores ``latency_ms``; at least one) and the search
    command whose budget it meets (:func:`suggested_budget`)."""
    fastest = min(trials, key=lambda t: t.user_attrs["latency_ms"])
    return fastest, f"autosculpt search --budget-ms {suggested_budget(fastest.user_attrs['latency_ms']):g}"


def suggested_budget(latency_ms: float) -> float:
    """The budget to search with for a network measured at ``latency_ms``: 5 % above it (the
    measurement's noise), rounded up to two significant digits (0.587 -> 0.62, 3.1 -> 3.3)."""
    value = latency_ms * 1.05
    step = 10.0 ** (math.floor(math.log10(value)) - 1)
    return round(math.ceil(round(value / step, 9)) * step, 12)
