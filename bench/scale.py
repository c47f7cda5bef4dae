"""A search at real scale: an ACDC-sized data set, searched as a user runs it, timed per phase.

ACDC has 100 training patients, two cine frames each (end-diastole and end-systole) of
about 10 slices at 224-256 px: about 2,000 labelled slices, 28 times the pixels per
epoch of the embedded set. This bench generates that (the embedded set's anatomy, both
frames, :mod:`autosculpt.search.data._cardiac`), writes it as an ACDC folder of NIfTI
volumes, trains the dense ``unet`` on it once (cached beside the data; on the GPU where
there is one: the table says which), then runs, in a subprocess, exactly what a user runs::

    autosculpt search --data DIR --size 224 --weights dense.pt --speedup 10

It prints a table per phase (data preparation, the dense baseline, preparing the study,
each trial's latency measurement and fine-tune (scored on val after each epoch), polish, export and report),
the fine-tune throughput in slices per second, the peak memory of each search (its
largest process) and the result, and names the CPU. ``--arms`` runs the search more
than once on the same data and baseline, side by side, with the options that differ
(for example with and without training on patches: ``--arms auto,whole``; ``sampled``
draws 1,000 training slices per trial epoch, a data fidelity for sets larger than that).

    python bench/scale.py                                      # ACDC scale (hours on 2 cores)
    python bench/scale.py --patients 10 --trials 4             # a small run of the same path
    python bench/scale.py --patients 20 --arms auto,whole      # patches against whole slices
    python bench/scale.py --quick                              # unet-tiny, 3 patients at 192 px, 2 trials (CI)
    python bench/scale.py --trials 2 --baseline-epochs 1 -- --epochs 1 --polish-epochs 1
                                                               # every phase once at full size: peak memory in minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel
import numpy as np
import optuna
import torch
from rich.console import Console
from rich.table import Table

from autosculpt.search.cache import cache_dir
from autosculpt.search.data import SegmentationData, load_data
from autosculpt.search.data._cardiac import FIELD_OF_VIEW_MM, SLICE_MM, generate
from autosculpt.search.latency import cpu_model
from autosculpt.search.training.baseline import get_baseline
from autosculpt.search.training.train import resolve_crop, resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import card_result  # noqa: E402

# name: extra search options. auto: the search's defaults (patches for slices over 160 px, every
# training slice each epoch); whole: whole slices; sampled: a trial's epoch draws 1,000 slices.
ARMS = {"auto": [], "whole": ["--crop", "0"], "sampled": ["--epoch-slices", "1000"]}
ES_FRAME = 12  # the end-systolic frame's number in the file names (ACDC's vary per patient)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--patients", type=int, default=100, help="generated patients, two frames each (default 100)")
    parser.add_argument("--image-size", type=int, default=224, help="slice side in pixels (default 224)")
    parser.add_argument("--speedup", type=float, default=10, help="the search's --speedup (default 10)")
    parser.add_argument("--trials", type=int, help="the search's --trials (default: the search's own)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the baseline (default 0)")
    parser.add_argument("--arms", default="auto", help=f"comma-separated search variants, one run each: {', '.join(ARMS)} "
                        "(auto: the search's defaults; whole: --crop 0; sampled: --epoch-slices 1000) (default auto)")
    parser.add_argument("--out", type=Path, default=Path("scale-runs"), help="where studies, exports and logs go")
    parser.add_argument("--json", type=Path, help="write every arm's figures to this file")
    parser.add_argument("--baseline-epochs", type=int, help="the dense baseline's epochs (default: the library's own; "
                        "fewer for a memory or timing run that does not report Dice)")
    parser.add_argument("search_extra", nargs="*", metavar="-- SEARCH OPTION", help="more options for every search, after --")
    parser.add_argument("--quick", action="store_true", help="tiny CI run: unet-tiny, 3 patients at 192 px, "
                        "--speedup 1.2, a 10-epoch baseline, 2 trials of 2 epochs, the smoke preset's short measurements")
    args = parser.parse_args(argv)
    args.model, args.search_options = "unet", list(args.search_extra)
    if args.quick:
        args.model, args.patients, args.image_size, args.trials, args.speedup = "unet-tiny", 3, 192, 2, 1.2
        args.baseline_epochs = args.baseline_epochs or 10
        args.search_options += ["--preset", "smoke", "--model", "unet-tiny", "--epochs", "2", "--polish-epochs", "2",
                                "--finalists", "1"]  # smoke: its short latency measurements
    return args


def main(argv=None) -> int:
    args = parse(argv)
    console = Console(width=180)
    arms = args.arms.split(",")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        console.print(f"unknown arm {', '.join(unknown)}: choose from {', '.join(ARMS)}")
        return 2
    started = time.perf_counter()
    folder, data_s = acdc_folder(args.patients, args.image_size, args.seed)
    start = time.perf_counter()
    data = load_data(folder, image_size=args.image_size, seed=args.seed)
    read_s = time.perf_counter() - start
    weights, baseline_s, device = dense_weights(folder, data, args.model, args.seed, args.baseline_epochs)
    console.print(f"data: {folder} ({data_s:.0f} s to write, {read_s:.0f} s to read: {len(data.train)} train slices); "
                  f"dense {args.model}: {weights} ({baseline_s:.0f} s, trained on {device})")
    results = [run_arm(arm, args, folder, weights, len(data.train), console) for arm in arms]
    console.print(phase_table(results, {"data preparation (generate, write NIfTI; 0 = cached)": data_s,
                                        "reading the folder as the search does": read_s,
                                        f"dense baseline on {device} (0 = cached)": baseline_s}))
    console.print(result_table(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    console.print(f"CPU: {cpu_model()}; {torch.get_num_threads()} threads; time taken: {time.perf_counter() - started:.0f} s")
    return 0


def acdc_folder(patients: int, size: int, seed: int) -> tuple[Path, float]:
    """The generated set as ACDC's layout (patientNNN/patientNNN_frameFF[_gt].nii.gz), cached;
    returns the folder and the seconds it took now (0 when cached)."""
    folder = cache_dir("scale") / f"acdc-{size}px-{patients}p-seed{seed}"
    if (folder / "done").exists():
        return folder, 0.0
    start = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    images, masks, _, volumes = generate(size, seed, patients, frames=2)
    zooms = (FIELD_OF_VIEW_MM / size, FIELD_OF_VIEW_MM / size, SLICE_MM)
    for volume in dict.fromkeys(volumes):
        patient, frame = volume.split("_frame")
        rows = [i for i, v in enumerate(volumes) if v == volume]
        name = f"{patient}_frame{1 if frame == '1' else ES_FRAME:02d}"
        (folder / patient).mkdir(parents=True, exist_ok=True)
        affine = np.diag([*zooms, 1.0])
        # ACDC stores (x, y, slice): our (slice, row, column) stacks move their slice axis last.
        nibabel.Nifti1Image(np.moveaxis(images[rows], 0, -1), affine).to_filename(str(folder / patient / f"{name}.nii.gz"))
        nibabel.Nifti1Image(np.moveaxis(masks[rows], 0, -1), affine).to_filename(str(folder / patient / f"{name}_gt.nii.gz"))
    (folder / "done").write_text("")
    return folder, time.perf_counter() - start


def dense_weights(folder: Path, data: SegmentationData, model: str, seed: int, epochs: int | None) -> tuple[Path, float, str]:
    """The dense ``model`` (a preset) trained on ``data`` for ``epochs`` (None: the library's baseline), on the
    GPU where there is one, on patches as the search trains, saved beside ``folder``; (file, seconds now, device)."""
    device = resolve_device("auto")
    weights = folder.parent / f"{folder.name}-{model}-{device}{'' if epochs is None else f'-{epochs}ep'}.pt"
    if weights.exists():
        return weights, 0.0, device
    start = time.perf_counter()
    baseline = get_baseline(model, data, seed=seed, epochs=epochs, device=device, crop=resolve_crop(None, data.image_size))
    torch.save(baseline.model.state_dict(), weights)
    return weights, time.perf_counter() - start, device


def run_arm(arm: str, args, folder: Path, weights: Path, train_slices: int, console: Console) -> dict:
    """One ``autosculpt search`` in a subprocess; its figures read back from its study and card."""
    out = args.out / arm
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    url, name = f"sqlite:///{out.resolve() / 'studies.db'}", f"scale-{arm}"
    command = [sys.executable, "-m", "autosculpt.search.cli", "search", "--data", str(folder), "--size", str(args.image_size),
               "--weights", str(weights), "--speedup", f"{args.speedup:g}", "--seed", str(args.seed), "--storage", url,
               "--study", name, "--out", str(out / "export"), *args.search_options, *ARMS[arm], *(["--trials", str(args.trials)] if args.trials else [])]
    console.print(f"[bold]{arm}[/]: autosculpt {' '.join(command[3:])}")
    launched, start = time.time(), time.perf_counter()
    with (out / "search.log").open("w") as log:
        search = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(search.pid, 0)  # this search's own usage (and its children's), not every arm's
    wall = time.perf_counter() - start
    peak_mb = usage.ru_maxrss / 1024
    study = optuna.load_study(study_name=name, storage=url)
    return {"arm": arm, "exit": os.waitstatus_to_exitcode(status), "wall_s": wall, "peak_mb": peak_mb,
            **study_phases(study, launched, wall, train_slices), "result": card_result(out / "export" / "model.json")}


def study_phases(study: optuna.Study, launched: float, wall: float, train_slices: int) -> dict:
    """Seconds per phase of a search launched at ``launched`` (epoch seconds) that took ``wall``,
    from the study's own records: before its first trial (loading data, building the network,
    measuring the dense model), its trials, the polish record, and the rest (export, report)."""
    trials = [t for t in study.trials if t.datetime_start and t.datetime_complete]
    first = min((t.datetime_start.timestamp() for t in trials), default=launched)
    last = max((t.datetime_complete.timestamp() for t in trials), default=first)
    polish = (study.user_attrs.get("polish") or {}).get("time_s", 0.0)
    rows = [{"trial": t.number, "state": t.state.name.lower(), "measure_s": t.user_attrs.get("time_measure_s", 0.0),
             "finetune_s": t.user_attrs.get("time_finetune_s", 0.0),
             "epochs": len(t.user_attrs.get("dice_by_epoch", [])), "crop": t.user_attrs.get("crop"), "dice": t.value}
            for t in trials]
    tuned = [r for r in rows if r["epochs"]]
    throughput = sum(r["epochs"] for r in tuned) * train_slices / sum(r["finetune_s"] for r in tuned) if tuned else float("nan")
    return {"trials": rows, "before_s": first - launched, "trials_s": last - first, "polish_s": polish,
            "export_s": launched + wall - last - polish, "finetune_slices_per_s": throughput}


def phase_table(results: list[dict], before: dict[str, float]) -> Table:
    """Seconds per phase: ``before`` the searches (shared by the arms), then each arm's."""
    table = Table(title="Where the time went (seconds; medians per trial)")
    table.add_column("phase")
    for r in results:
        table.add_column(r["arm"], justify="right")

    def row(label, value):
        table.add_row(label, *[value(r) for r in results])

    for label, seconds in before.items():
        row(label, lambda r, seconds=seconds: f"{seconds:.0f}")
    row("search: load data, build, measure the dense model", lambda r: f"{r['before_s']:.0f}")
    for key, label in (("measure_s", "trial: latency measurement"), ("finetune_s", "trial: fine-tune, scored on val each epoch")):
        row(label, lambda r, key=key: f"{np.median([t[key] for t in r['trials']]):.1f}" if r["trials"] else "-")
    row("trials (all, wall clock)", lambda r: f"{r['trials_s']:.0f} ({len(r['trials'])} trials)")
    row("polish", lambda r: f"{r['polish_s']:.0f}")
    row("export and report", lambda r: f"{r['export_s']:.0f}")
    row("search end to end", lambda r: f"{r['wall_s']:.0f} ({r['wall_s'] / 60:.1f} min)")
    row("fine-tune throughput (train slices / s)", lambda r: f"{r['finetune_slices_per_s']:.1f}")
    row("peak memory (largest process)", lambda r: f"{r['peak_mb'] / 1024:.2f} GB")
    return table


def result_table(results: list[dict], args) -> Table:
    table = Table(title=f"Result: {args.patients} patients x 2 frames at {args.image_size} px, --speedup {args.speedup:g}")
    for column in ("arm", "exit", "trial", "median ms", "budget ms", "test Dice", "baseline test Dice", "Δ test Dice", "x params"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for r in results:
        res = r["result"]
        if res is None:
            table.add_row(r["arm"], str(r["exit"]), "nothing exported", *[""] * 6)
            continue
        table.add_row(r["arm"], str(r["exit"]), str(res["trial"]), f"{res['median_ms']:.2f}", f"{res['budget_ms']:.2f}",
                      f"{res['test_dice']:.3f}", f"{res['baseline_test_dice']:.3f}",
                      f"{res['test_dice'] / res['baseline_test_dice'] - 1:+.1%}", f"{res['param_ratio'] or 0:.0f}")
    return table


if __name__ == "__main__":
    sys.exit(main())
