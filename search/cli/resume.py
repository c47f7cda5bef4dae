"""``autosculpt resume``: continue a stored study with its stored settings."""

from __future__ import annotations

import time
from dataclasses import fields, replace

from ...errors import UserError
from ..study.best import ranked_within
from ..study.quota import TrialQuota
from ..study.settings import SETTINGS_ATTR, Settings, merged_target
from ..study.storage import storage_url
from ..study.study import open_existing, prepare_study
from ._common import add_command, add_search_options, add_storage_option
from ._session import console, finish_study, run_workers
from .search import VERDICT_HELP, settings_given, storage_flag

EXAMPLES = [
    "autosculpt resume unet-20ms-20261125-011200",
    "autosculpt resume paper-5ms --trials 50            # 50 more trials",
    "autosculpt resume paper-5ms --timeout 3600         # one more hour, also after the time limit ran out",
    "autosculpt resume paper-5ms --budget-ms 8 --force  # change a stored setting",
]

# Settings a resumed study may change without --force: how long it runs, where it trains.
FREE_TO_CHANGE = {"trials", "timeout_s", "max_dice_loss", "polish_epochs", "finalists", "device"}


def register(subparsers) -> None:
    parser = add_command(subparsers, "resume", "Continue a stored study with its stored settings; failed and interrupted trials are retried.", EXAMPLES, run)
    parser.add_argument("name", metavar="NAME", help="study name (see: autosculpt studies)")
    add_storage_option(parser)
    add_search_options(parser)
    parser.add_argument("--force", action="store_true", help="accept settings that differ from the stored ones")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="local worker processes (default 1)")
    parser.add_argument("--out", metavar="DIR", help="where to export the best model and report (default exports/NAME)")
    parser.epilog += VERDICT_HELP


def run(args) -> int:
    url = storage_url(args.storage)
    study, stored = open_existing(args.name, url)
    settings = merged_settings(study, stored, args)
    study.set_user_attr(SETTINGS_ATTR, settings.to_dict())
    console.print(f"resuming {args.name}: {TrialQuota(study, settings).counted()} trials stored, {settings.trials} in all")
    if settings.budget_ms != stored.budget_ms:
        console.print(budget_change_note(study, stored.budget_ms, settings.budget_ms))
    run_workers(args.name, url, prepare_study(study, url, settings), args.workers, storage_flag(args.storage))
    return finish_study(args.name, url, args.out)


def merged_settings(study, stored: Settings, args) -> Settings:
    """The stored settings with what the user gave: ``--trials N`` adds N trials and
    ``--timeout S`` S seconds from now; a changed setting that alters what a trial means
    is refused unless ``--force``."""
    given = {k: v for k, v in settings_given(args).items() if v is not None and k in {f.name for f in fields(Settings)}}
    if "trials" in given:
        given["trials"] = TrialQuota(study, stored).counted() + given["trials"]
    if "target" in given:
        given["target"] = merged_target(stored.target, given["target"])
    if "timeout_s" in given:
        given["timeout_s"] += time.time() - study.user_attrs.get("started_at", time.time())
    changed = {k for k, v in given.items() if getattr(stored, k) != v}
    refused = sorted(changed - FREE_TO_CHANGE)
    if refused and not args.force:
        shown = ", ".join(f"{k} (stored {getattr(stored, k)!r}, given {given[k]!r})" for k in refused)
        raise UserError(f"study {study.study_name!r} was made with other settings: {shown}; drop them or add --force")
    return replace(stored, **given)


def budget_change_note(study, old_ms: float, new_ms: float) -> str:
    """One line on what a changed budget means for the stored trials."""
    trials = study.get_trials(deepcopy=False)
    within = len(ranked_within(trials, new_ms))
    return (f"budget changed from {old_ms:g} to {new_ms:g} ms: {within} stored trials are within it. "
            f"Report, export and the live view judge every trial's measured latency against {new_ms:g} ms; "
            "the stored trials keep their Optuna constraint of the old budget (finished trials are read-only).")
