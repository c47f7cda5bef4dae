"""The benchmarks' ``--quick`` modes run end to end and print their tables, so they cannot rot.

Each runs in a subprocess on a temporary storage; data and the unet-tiny baseline come
from the session's cache (conftest), so the baseline is trained once for all of them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, *args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "AUTOSCULPT_BENCH_STORAGE": f"sqlite:///{tmp_path / 'bench.db'}", "COLUMNS": "200"}
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env,
                          timeout=900, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the quick runs take ~1-2 min on a quiet machine; much longer on a shared one
def test_paper_quick_runs_in_parts_and_prints_the_front(tmp_path):
    """A first part of 2 trials, then the full quick run resumes the stored study to 3."""
    first = run_bench("paper.py", "--quick", "--trials", "2", tmp_path=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    done = run_bench("paper.py", "--quick", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Pareto front of paper-quick" in done.stdout and "baseline" in done.stdout
    assert re.search(r"paper-quick\s*│\s*3\s*│", done.stdout), done.stdout  # both parts' trials
    assert "time taken:" in done.stdout
    scaling = run_bench("trials.py", "--storage", f"sqlite:///{tmp_path / 'bench.db'}", tmp_path=tmp_path)
    assert scaling.returncode == 0, scaling.stderr[-3000:]
    assert "paper-quick" in scaling.stdout and "trials / hour" in scaling.stdout


@pytest.mark.slow
@pytest.mark.timeout(1500)  # the quick runs take ~1-2 min on a quiet machine; much longer on a shared one
def test_peers_quick_prints_every_arm(tmp_path):
    """Every arm of bench/peers.py prints a row, and the NNI arm really ran: its row shows
    the best Dice within the budget (or "none" within it: at --quick's 2x the budget may
    be under every network's latency) and its study holds one Dice per trial.

    "not installed" passes only as a skip, and only where nni cannot be imported by
    $NNI_PYTHON (as bench/peers.py reads it): a CI machine without that venv.
    """
    import optuna

    sys.path.insert(0, str(BENCH))
    from peers import NAMES, NNI_PYTHON

    done = run_bench("peers.py", "--quick", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for arm in NAMES.values():
        assert arm in done.stdout, done.stdout
    assert "Where the trials' time went" in done.stdout and "time taken:" in done.stdout
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    budgets = {optuna.load_study(study_name=name, storage=url).user_attrs["settings"]["budget_ms"]
               for name in optuna.get_all_study_names(url)}
    assert len(budgets) == 1, budgets  # one budget in ms for every arm of the run
    nni_row = next(line for line in done.stdout.splitlines() if NAMES["nni"] in line)
    try:
        importable = subprocess.run([NNI_PYTHON, "-c", "import nni"], capture_output=True, timeout=120).returncode == 0
    except OSError:
        importable = False
    if not importable:
        pytest.skip(f"NNI arm not checked (it printed {nni_row.strip()!r}): nni is not importable by {NNI_PYTHON} "
                    "(set $NNI_PYTHON to a venv with nni 3.0); the other arms were checked")
    assert re.search(r"│\s*(\d\.\d{3} \(\d+x\)|none)\s*│", nni_row), nni_row  # not "not installed"/"failed"
    [name] = [name for name in optuna.get_all_study_names(url) if name.endswith("-nni-quick")]
    trials = optuna.load_study(study_name=name, storage=url).trials
    assert len(trials) == 3 and all(0 <= t.value <= 1 and t.user_attrs["latency_ms"] > 0 for t in trials), trials


def test_hypervolume_of_a_staircase():
    sys.path.insert(0, str(BENCH))
    from _common import hypervolume

    # (Dice, ms) points against reference (0, 10 ms): 0.5 over [1, 5) and 0.8 over [5, 10).
    assert hypervolume([(0.5, 1.0), (0.8, 5.0), (0.3, 3.0), (0.9, 12.0)], 10.0) == pytest.approx(0.6)
    assert hypervolume([], 10.0) == 0.0
