"""The HTML report: data from studies in every state, escaping, offline safety, a real browser, the CLI."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pytest
import report_fixtures as fx
from conftest import run_cli
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from PIL import Image
from plotly.offline import get_plotlyjs

from autosculpt.reports import QualitativeSample, get_report_data, render_report, write_report
from autosculpt.reports._samples import CLASS_COLOURS, sample_pngs
from autosculpt.search.study.best import best_feasible
from autosculpt.search.study.storage import masked

optuna.logging.set_verbosity(optuna.logging.WARNING)
CHROMIUM = shutil.which("chromium")
XSS = "<script>alert(1)</script>"


def new_study(tmp_path: Path, name: str = "demo", **kwargs) -> optuna.Study:
    return fx.create_study(f"sqlite:///{tmp_path / 'studies.db'}", name, **kwargs)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> optuna.Study:
    """200 trials of every kind, one still running, the best one exported."""
    study = new_study(tmp_path_factory.mktemp("big"), "big")
    fx.add_trials(study, fx.mixed_kinds(200) + ["running"])
    fx.mark_exported(study)
    return study


@pytest.fixture(scope="module")
def big_html(big, tmp_path_factory) -> Path:
    return write_report(big, tmp_path_factory.mktemp("html") / "report.html", [fx.sample(0), fx.sample(1, with_predictions=False)])


# --- data -----------------------------------------------------------------------------------------


def test_normal_study_compares_the_exported_trial_with_the_baseline(big):
    data = get_report_data(big)
    exported = big.user_attrs["export"]
    h = data.headline
    assert h.reason is None and h.candidate.exported and h.candidate.trial == exported["trial"]
    assert h.candidate.latency_ms == exported["latency"]["median_ms"]
    assert h.candidate.file_size == exported["file_size"]
    assert h.faster == pytest.approx(fx.BASE_LATENCY_MS / exported["latency"]["median_ms"])
    assert h.smaller == pytest.approx(fx.BASE_PARAMS / h.candidate.params)
    assert h.dice_change_pct < 0 and h.dice_split == "validation"
    assert h.target == [fx.CPU, "1 thread", "ONNX Runtime"]
    assert data.counts["running"] == 1 and sum(data.counts[s] for s in fx.KINDS[2:] + ("complete",)) == 201


def test_a_repeat_is_noted_in_the_table_and_not_drawn_twice(tmp_path):
    study = new_study(tmp_path)
    fx.add_trials(study, ["feasible"] * 3)
    first = best_feasible(study)
    study.add_trial(create_trial(value=first.value, params=first.params, distributions=first.distributions,
                                 user_attrs={**first.user_attrs, "finetuned": False, "repeat_of": first.number}))
    data = get_report_data(study)
    drawn = [r.number for r in data.pareto.front + data.pareto.dominated + data.pareto.infeasible]
    assert sorted(drawn) == [0, 1, 2]
    repeat = next(r for r in data.trials if r.number == 3)
    assert repeat.repeat_of == first.number and repeat.note.startswith(f"repeats the network of trial {first.number}")


def test_pareto_front_is_feasible_and_non_dominated(big):
    pareto = get_report_data(big).pareto
    assert pareto.front and pareto.infeasible and pareto.highlight == big.user_attrs["export"]["trial"]
    for row in pareto.front + pareto.dominated:
        assert row.latency_ms <= pareto.budget_ms and row.state == "complete"
    for row in pareto.front:
        assert not any(o.dice >= row.dice and o.latency_ms < row.latency_ms for o in pareto.front + pareto.dominated)
    assert all(r.latency_ms > pareto.budget_ms for r in pareto.infeasible)


def test_history_layers_importance_and_settings(big):
    data = get_report_data(big)
    best = [dice for _, dice in data.history.best]
    assert best == sorted(best) and len(data.history.rows) == 201
    assert len(data.layers.trials) == 10 and data.layers.layers == list(fx.BASE_CHANNELS)
    assert all(0 < v <= 1 for row in data.layers.keep for v in row)
    assert data.layers.candidate_channels and data.layers.channels_reason is None
    assert [i.objective for i in data.importance] == ["Dice", "latency"]
    assert all(i.reason is None and i.importances for i in data.importance)
    settings = dict(data.settings)
    assert settings["storage"] == "postgresql://search:***@db.local:5432/studies"
    assert settings["space.width"] == "0.25, 0.5, 1.0" and settings["timeout_s"] == "none"
    commands = " ".join(c for _, c in data.commands)
    assert "s3cret" not in commands and "autosculpt resume big --storage" in commands
    assert "autosculpt export big" in commands and "--trial" in commands


def test_best_feasible_is_shown_until_a_trial_is_exported(tmp_path):
    study = new_study(tmp_path)
    fx.add_trials(study, ["feasible"] * 4 + ["infeasible"])
    data = get_report_data(study)
    assert "best within budget" in data.headline.candidate.label and not data.headline.candidate.exported
    html = render_report(data)
    assert "not exported yet" in html


def test_a_resolved_budget_reads_the_same_everywhere_in_the_report(tmp_path):
    """A ``--speedup`` budget (here 33.7 ms / 15) is 2.25 ms in the headline, the budget
    line, the trial counts and the plot: the page once said 2.2 ms beside 2.25 ms. (The
    settings table keeps the stored value.)"""
    study = new_study(tmp_path, budget_ms=2.24859)
    fx.add_trials(study, ["feasible"] * 3)
    html = render_report(get_report_data(study))
    assert "the 2.25 ms budget" in html and "latency budget 2.25 ms" in html and "2.2 ms" not in html


def test_zero_complete_trials(tmp_path):
    study = new_study(tmp_path)
    fx.add_trials(study, ["failed", "pruned", "running"])
    data = get_report_data(study)
    assert data.headline.candidate is None and "No trial has completed" in data.headline.reason
    assert data.pareto.reason and data.layers.heatmap_reason and data.layers.channels_reason
    assert all("at least 2 complete trials" in i.reason for i in data.importance)
    html = render_report(data)
    for sentence in (data.headline.reason, data.pareto.reason, data.layers.heatmap_reason):
        assert sentence in html
    assert "still running" in html


def test_all_trials_over_budget(tmp_path):
    study = new_study(tmp_path)
    fx.add_trials(study, ["infeasible"] * 3)
    data = get_report_data(study)
    assert data.headline.candidate is None and "None of the 3 complete trials met the 20 ms budget" in data.headline.reason
    assert not data.pareto.front and len(data.pareto.infeasible) == 3 and data.pareto.reason is None
    assert data.history.best == []
    assert "plot-pareto" in render_report(data)


def test_running_trials_are_counted_and_listed(tmp_path):
    study = new_study(tmp_path)
    fx.add_trials(study, ["feasible", "feasible", "running", "running"])
    data = get_report_data(study)
    assert data.counts["running"] == 2
    assert [r.state for r in data.trials].count("running") == 2
    assert "this report is a snapshot" in render_report(data)


def test_missing_baseline_and_empty_study(tmp_path):
    study = new_study(tmp_path, with_baseline=False)
    data = get_report_data(study)
    assert data.headline.baseline is None and "no baseline figures" in data.headline.reason
    assert data.history.reason and data.class_names == list(fx.CLASSES)
    fx.add_trials(study, ["feasible", "feasible"])
    data = get_report_data(study)
    assert data.headline.candidate and data.headline.smaller is None
    assert "no baseline channel counts" in data.layers.channels_reason
    render_report(data)
    bare = optuna.create_study(storage=f"sqlite:///{tmp_path / 'bare.db'}", direction="maximize")
    assert "The study has no trials yet." in render_report(get_report_data(bare))


def test_exported_dice_is_compared_on_the_test_split(tmp_path):
    study = new_study(tmp_path)
    fx.add_trials(study, ["feasible"] * 3)
    study.set_user_attr("baseline", fx.baseline() | {"test_dice": 0.5, "test_dice_per_class": {"RV": 0.4}})
    fx.mark_exported(study)
    headline = get_report_data(study).headline
    assert headline.dice_split == "test" and headline.baseline.dice == 0.5
    assert headline.baseline.dice_per_class == {"RV": 0.4}


def test_report_and_export_judge_by_latency_against_the_current_budget(tmp_path):
    """After ``resume --force --budget-ms`` a trial's stored constraint and ``feasible`` flag
    keep the old budget's verdict (Optuna's finished trials are read-only); the report, the
    live view and export all read the latency against the budget the study has now."""
    study = new_study(tmp_path, budget_ms=10.0)
    old_budget = 20.0
    for latency, dice in ((8.0, 0.80), (15.0, 0.90)):  # the better one fitted only the old budget
        study.add_trial(create_trial(
            values=[dice], params={"keep": 0.5}, distributions={"keep": FloatDistribution(0.1, 1.0)},
            user_attrs={"latency_ms": latency, "finetuned": True, "feasible": latency <= old_budget},
            system_attrs={"constraints:latency": latency - old_budget}))
    rows = get_report_data(study).trials
    assert [(r.feasible, r.candidate) for r in rows] == [(True, True), (False, False)]
    assert rows[0].keep == {"all layers": 0.5}
    data = get_report_data(study)
    assert data.headline.candidate.trial == best_feasible(study).number == 0
    assert data.counts["feasible"] == 1 and [r.number for r in data.pareto.infeasible] == [1]


def test_importance_is_explained_when_it_cannot_be_computed(tmp_path, monkeypatch):
    study = new_study(tmp_path)
    dist = {"keep": FloatDistribution(0.1, 1.0)}
    for latency in (5.0, 6.0):
        study.add_trial(create_trial(values=[0.8], params={"keep": 0.5}, distributions=dist,
                                     user_attrs={"latency_ms": latency}))
    assert all("same parameter values" in i.reason for i in get_report_data(study).importance)
    study.add_trial(create_trial(values=[0.7], params={"keep": 0.3}, distributions=dist, user_attrs={"latency_ms": 4.0}))

    def fail(*args, **kwargs):
        raise RuntimeError("evaluator exploded")

    monkeypatch.setattr(optuna.importance, "get_param_importances", fail)
    assert all("evaluator exploded" in i.reason for i in get_report_data(study).importance)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),
    ("sqlite:///studies/x.db", "sqlite:///studies/x.db"),
    ("not a url", "not a url"),
    ("not a url://alice:s3cret-pw@", "not a url://alice:***@"),  # malformed: parsing fails, the password is still hidden
    ("postgresql+psycopg://alice:p@ss:word@db:5432/x", "postgresql+psycopg://alice:***@db:5432/x"),
])
def test_one_masking_function_hides_passwords_even_in_malformed_urls(url, shown):
    assert masked(url) == shown


def test_samples_are_coloured_png_overlays():
    sample = fx.sample(0, size=32)
    pngs = sample_pngs(sample)
    truth = np.asarray(Image.open(io.BytesIO(base64.b64decode(pngs["truth"].split(",", 1)[1]))))
    assert truth.shape == (32, 32, 3)
    lv = truth[sample.truth == 3].mean(axis=0)
    assert np.argmax(lv) == np.argmax(CLASS_COLOURS[2])  # the LV reads blue
    assert sample_pngs(fx.sample(0, with_predictions=False))["exported"] is None
    with pytest.raises(ValueError, match="shape"):
        QualitativeSample(image=np.zeros((4, 4)), truth=np.zeros((4, 5), dtype=int))


# --- the page ---------------------------------------------------------------------------------------


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text of each <script>."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self.in_script = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.in_script = tag == "script"

    def handle_endtag(self, tag):
        self.in_script = False

    def handle_data(self, data):
        if self.in_script:
            self.scripts.append(data)


def test_hostile_names_render_as_text(tmp_path):
    study = new_study(tmp_path, XSS)
    fx.add_trials(study, ["feasible", "feasible"])
    hostile = create_trial(values=[0.7], params={f"keep.</script>{XSS}": 0.4},
                           distributions={f"keep.</script>{XSS}": FloatDistribution(0.1, 1.0)},
                           user_attrs={"fail_reason": XSS, "latency_ms": 5.0}, system_attrs={"constraints:latency": -1.0})
    study.add_trial(hostile)
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": f"</script>{XSS}"}))
    study.set_user_attr("settings", fx.settings() | {"data": XSS})
    html = render_report(get_report_data(study))
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    parsed = Tags(html)
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert all(attrs == {} or set(attrs) == {"type", "data-plot"} for attrs in scripts)
    assert len(scripts) == 3 + sum(1 for a in scripts if "data-plot" in a)
    for text in parsed.scripts:
        if text.lstrip().startswith("{"):
            json.loads(text)  # each figure's JSON survived intact


def test_nothing_is_fetched_from_a_network(big_html):
    html = big_html.read_text(encoding="utf-8")
    for tag, attrs in Tags(html).tags:
        for name in ("src", "href", "action", "poster", "data", "xlink:href"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "ftp:")), (tag, name, value)
        assert tag != "link", attrs
    css = html[html.index("<style>"):html.index("</style>")]
    assert "url(" not in css and "@import" not in css
    assert "default-src 'none'" in html  # the page's CSP forbids any fetch


def test_200_trials_fit_in_10_mb_with_plotly_once(big_html):
    html = big_html.read_text(encoding="utf-8")
    assert big_html.stat().st_size < 10_000_000
    assert html.count(get_plotlyjs()[:200]) == 1


# --- a real browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(big_html, tmp_path_factory):
    """Open the 200-trial report in headless Chromium: its DOM after scripts, log, net log, screenshot."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    folder = tmp_path_factory.mktemp("chromium")
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--no-first-run", "--disable-component-update", "--disable-sync", f"--user-data-dir={folder / 'profile'}",
               "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", f"--log-net-log={folder / 'net.json'}",
               "--window-size=1400,5000", f"--screenshot={folder / 'report.png'}", "--dump-dom", big_html.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return {"dom": done.stdout, "log": done.stderr, "net": json.loads((folder / "net.json").read_text()),
            "png": folder / "report.png"}


def test_browser_draws_every_plot_without_console_errors(browser, big_html):
    console = [line for line in browser["log"].splitlines() if ":CONSOLE" in line]
    assert console == []
    expected = big_html.read_text(encoding="utf-8").count('<div class="plot" id="plot-')
    segments = browser["dom"].split('id="plot-')[1:]
    assert expected == 7 and len(segments) == expected
    for segment in segments:
        name = segment.split('"', 1)[0]
        svg = segment.split('class="main-svg"', 1)
        assert len(svg) == 2, f"plot {name} did not draw"
        attrs = svg[1].split(">", 1)[0]
        width, height = (float(attrs.split(f'{key}="', 1)[1].split('"', 1)[0]) for key in ("width", "height"))
        assert width > 300 and height > 100, (name, width, height)


def test_browser_makes_no_network_request(browser):
    names = {value: key for key, value in browser["net"]["constants"]["logEventTypes"].items()}
    starts = [e["params"] for e in browser["net"]["events"]
              if names.get(e["type"]) == "URL_REQUEST_START_JOB" and "url" in e.get("params", {})]
    assert any(p.get("initiator") == "not an origin" for p in starts)  # the log works: it saw the browser's own
    page_requests = [p.get("url") for p in starts if p.get("initiator") != "not an origin"]
    assert page_requests == []


def test_screenshot_shows_a_drawn_page(browser):
    image = Image.open(browser["png"]).convert("RGB")
    assert image.size == (1400, 5000)
    colours = np.asarray(image.resize((140, 500))).reshape(-1, 3)
    plot_blue = np.all(np.abs(colours.astype(int) - (31, 95, 153)) < 40, axis=1)
    assert plot_blue.sum() > 50  # headline numbers, Pareto front and bars in the accent blue


# --- the command line -------------------------------------------------------------------------------


def test_cli_writes_a_report(storage_url, tmp_path):
    study = fx.create_study(storage_url, "cli-study")
    fx.add_trials(study, fx.mixed_kinds(12))
    out = tmp_path / "out" / "report.html"
    done = run_cli("report", "cli-study", "--storage", storage_url, "--out", str(out), timeout=120)
    assert done.returncode == 0, done.stderr
    assert out.exists() and "cli-study" in out.read_text(encoding="utf-8")
    assert str(out) in done.stdout


def test_cli_unknown_study_lists_the_known_ones(storage_url, tmp_path):
    fx.create_study(storage_url, "known")
    done = run_cli("report", "unknown", "--out", str(tmp_path / "r.html"), env={"AUTOSCULPT_STORAGE": storage_url},
                   timeout=120)
    assert done.returncode == 2
    assert "'unknown'" in done.stderr and "known" in done.stderr.split("'unknown'", 1)[1]
    assert not (tmp_path / "r.html").exists()


def test_cli_help():
    done = run_cli("report", "--help", timeout=120)
    assert done.returncode == 0
    assert "--out" in done.stdout and "--storage" in done.stdout and "autosculpt report" in done.stdout
