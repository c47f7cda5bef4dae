"""Scaling: how long a trial takes and where its time goes, for studies already run.

For each study (default: every study in the storage), from its trials' user attributes:
median seconds per trial (wall clock, start to finish), trials per hour, the share of trial
time spent measuring latency (``time_measure_s``), fine-tuning (``time_finetune_s``, which
includes one validation pass per epoch) and scoring rejected candidates (``time_eval_s``;
"other" is pruning, size figures, storage), the share of
candidates rejected before training (over budget: ``finetuned`` False) and what that saved
(rejected count x the study's median fine-tune time).

    python bench/trials.py --storage sqlite:///studies/bench.db
    python bench/trials.py --storage sqlite:///studies/bench.db paper-1ms-64px
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402
from _common import scaling_row, scaling_table  # noqa: E402
from rich.console import Console  # noqa: E402

from autosculpt.search.study.settings import SETTINGS_ATTR, Settings  # noqa: E402
from autosculpt.search.study.storage import load_study, open_storage  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default="sqlite:///studies/bench.db", help="Optuna storage URL")
    parser.add_argument("studies", nargs="*", help="study names (default: all autosculpt studies in the storage)")
    args = parser.parse_args(argv)
    storage = open_storage(args.storage)
    names = args.studies or [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    rows = []
    for name in names:
        study = load_study(name, storage)
        if SETTINGS_ATTR not in study.user_attrs:
            continue
        s = Settings.from_dict(study.user_attrs[SETTINGS_ATTR])
        label = f"{name} ({s.model}, {s.image_size}px, {s.budget_ms:g} ms, {s.epochs} ep)"
        rows.append(scaling_row(label, study))
    Console(width=200).print(scaling_table(rows, "Time per trial and where it goes"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
