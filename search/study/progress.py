"""The live view of a running study: what the current trial is doing and the best so far."""

from __future__ import annotations

import time

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ...units import ms
from .best import best_within, within_budget
from .quota import COUNTED, counting, is_repeat


class LiveView:
    """A rich panel refreshed as trials progress (``phase``) and finish (``trial_finished``);
    one line per finished trial instead when ``quiet`` or when stderr is not a terminal.

    Counts come from the trials this view is told about plus those already stored
    when it starts, so refreshing never queries the database.
    """

    def __init__(self, study: optuna.Study, budget_ms: float, limit: int | None, quiet: bool = False):
        self.study_name = study.study_name
        self.budget_ms = budget_ms
        self.limit = limit
        self.started = time.monotonic()
        self.finished_here = 0
        self.phase_text = "starting"
        self.trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        self.console = Console(stderr=True)
        # In a log file (a container, a batch job) a live panel is unreadable: print lines.
        live = not quiet and self.console.is_terminal
        self.live = Live(self._render(), console=self.console, refresh_per_second=2) if live else None

    def __enter__(self) -> "LiveView":
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.update(self._render())
            self.live.__exit__(*exc)

    def phase(self, trial: optuna.Trial, text: str) -> None:
        """Show what the running trial is doing now."""
        self.phase_text = f"trial {trial.number}: {text}"
        if self.live:
            self.live.update(self._render())

    def trial_finished(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna callback: count the trial and refresh."""
        self.trials[trial.number] = trial
        self.finished_here += 1
        self.phase_text = f"trial {trial.number}: {trial.state.name.lower()}"
        if self.live:
            self.live.update(self._render())
        else:
            self.console.print(f"[{self.study_name}] {self.phase_text}; best: {self._best_text()}", highlight=False)

    def _count(self, predicate) -> int:
        return sum(1 for t in self.trials.values() if predicate(t))

    def _render(self) -> Table:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("study", self.study_name)
        table.add_row("now", self.phase_text)
        table.add_row("best feasible", self._best_text())
        tuned = self._count(lambda t: t.state == TrialState.COMPLETE and t.user_attrs.get("finetuned") is True)
        within = self._count(lambda t: within_budget(t, self.budget_ms))
        slow = self._count(lambda t: t.state == TrialState.COMPLETE and t.user_attrs.get("finetuned") is False
                           and not is_repeat(t))
        pruned = self._count(lambda t: t.state == TrialState.PRUNED and not is_repeat(t))
        repeats = self._count(lambda t: t.state in COUNTED and is_repeat(t))
        failed = self._count(lambda t: t.state == TrialState.FAIL)
        counted = counting([t for t in self.trials.values() if t.state in COUNTED], self.limit)
        total = f"/{self.limit}" if self.limit else ""
        table.add_row("trials", f"{counted}{total}: {tuned} fine-tuned ({within} within budget), {slow} too slow to "
                                f"fine-tune, {pruned} stopped early, {repeats} repeated a fine-tuned network, {failed} failed")
        table.add_row("time", self._time_text(counted))
        return table

    def _best_text(self) -> str:
        best = best_within(self.trials.values(), self.budget_ms)
        if best is None:
            return f"none yet within {ms(self.budget_ms)}"
        attrs = best.user_attrs
        return (f"trial {best.number}: Dice {best.values[0]:.3f}, {attrs['latency_ms']:.2f} ms "
                f"(budget {ms(self.budget_ms)}), {attrs.get('param_ratio', 0):.0f}x fewer parameters")

    def _time_text(self, counted: int) -> str:
        elapsed = time.monotonic() - self.started
        text = f"{elapsed:.0f} s elapsed"
        if self.limit and self.finished_here:
            left = max(self.limit - counted, 0) * elapsed / self.finished_here
            text += f", about {left:.0f} s left"
        return text
