"""Rendering: report data to one self-contained HTML page, through a Jinja2 template.

The page carries everything inline: styles, plotly.js (once), the figures as JSON and
the sample images as ``data:`` PNGs, so it opens offline. Autoescaping is on; the only
unescaped inserts are our own static files, plotly.js, and figure JSON whose ``<`` are
escaped so that no string in a study can close its ``<script>`` element.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

import jinja2
import optuna
import plotly.io
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from . import _figures
from . import _format as fmt
from ._data import ReportData, get_report_data
from ._headline import HeadlineInfo, ModelSummary
from ._samples import CLASS_COLOURS, QualitativeSample, sample_pngs

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("autosculpt.reports", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters.update(dice=fmt.dice, distance=fmt.distance, ms=fmt.ms, count=fmt.count, size=fmt.size, ratio=fmt.ratio, pct=fmt.pct)


def write_report(
    study: optuna.Study,
    out_path: str | Path,
    samples: Sequence[QualitativeSample] | None = None,
    *,
    storage_url: str | None = None,
) -> Path:
    """Write the report of ``study`` to ``out_path`` (parents created) and return the path.

    Works on a study in any state; ``storage_url`` (shown masked in the commands to
    resume and export) defaults to the study's ``storage`` setting.
    """
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(get_report_data(study, storage_url), samples), encoding="utf-8")
    return path


def render_report(data: ReportData, samples: Sequence[QualitativeSample] | None = None) -> str:
    """The HTML page of ``data``, with ``samples`` as the qualitative results."""
    figures = {
        "pareto": _figures.pareto_figure(data.pareto),
        "history": _figures.history_figure(data.history),
        "time": _figures.time_figure(data.history),
        "heatmap": _figures.heatmap_figure(data.layers),
        "channels": _figures.channels_figure(data.layers),
    }
    figures |= {f"importance-{i.objective}": _figures.importance_figure(i) for i in data.importance}
    return _ENV.get_template("report.html.j2").render(
        data=data,
        figures={name: _embed(fig) for name, fig in figures.items() if fig is not None},
        headline_rows=_headline_rows(data.headline, data.class_names),
        samples=[sample_pngs(s) | {"sample": s} for s in samples or ()],
        legend=[(name, f"rgb{colour}") for name, colour in zip(data.class_names, CLASS_COLOURS)],
        generated=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        css=Markup(_static("report.css")),
        script=Markup(_static("report.js")),
        plotly_js=Markup(get_plotlyjs()),
    )


def _embed(figure) -> Markup:
    """Figure JSON safe inside ``<script type="application/json">``: every ``<`` escaped."""
    return Markup(plotly.io.to_json(figure, validate=False).replace("<", "\\u003c"))


def _static(name: str) -> str:
    return files("autosculpt.reports").joinpath("static", name).read_text(encoding="utf-8")


def _headline_rows(info: HeadlineInfo, class_names: list[str]) -> list[tuple[str, str, str, str]]:
    """(figure, baseline, candidate, change) rows of the comparison table, as text."""
    base, cand = info.baseline, info.candidate
    dice = [("Dice, mean of the structures", _get(base, "dice"), _get(cand, "dice"))]
    dice += [(f"Dice, {name}", _class_dice(base, name), _class_dice(cand, name)) for name in class_names]
    rows = [(label, fmt.dice(b), fmt.dice(c), _difference(b, c)) for label, b, c in dice]
    for label, field, show, word in _SIZE_ROWS:
        b, c = _get(base, field), _get(cand, field)
        rows.append((label, show(b), show(c), f"{fmt.ratio(b / c)} {word}" if b and c else ""))
    if cand and cand.file_size is None:
        rows[-1] = (rows[-1][0], rows[-1][1], "not exported yet", "")
    return rows


_SIZE_ROWS = (
    ("Latency, median", "latency_ms", fmt.ms, "faster"),
    ("Latency, 90th percentile", "latency_p90_ms", fmt.ms, "faster"),
    ("Parameters", "params", fmt.count, "fewer"),
    ("Multiply-accumulates per image", "macs", fmt.count, "fewer"),
    ("ONNX file size", "file_size", fmt.size, "smaller"),
)


def _get(model: ModelSummary | None, field: str):
    return getattr(model, field) if model else None


def _class_dice(model: ModelSummary | None, name: str) -> float | None:
    return model.dice_per_class.get(name) if model else None


def _difference(before: float | None, after: float | None) -> str:
    return fmt.signed(after - before, ".3f") if before is not None and after is not None else ""
