"""Drawing: report data to plotly figures, one function per plot.

Each function takes an ``_data`` info object and returns a figure, or None when the
info carries a ``reason`` instead (the page then shows the reason). Text that comes from
the study (layer and parameter names, failure reasons) is HTML-escaped because plotly
renders labels as a small HTML subset.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go

from . import _format as fmt
from ._data import HistoryInfo, ImportanceInfo, LayersInfo, ParetoInfo
from ._trials import TrialRow

BLUE, LIGHT_BLUE, GREY, ORANGE, RED, PURPLE, INK = (
    "#1f5f99", "#9dbedc", "#9a9a9a", "#e69f00", "#c0392b", "#7b4f9d", "#222222")
PHASE_STYLE = {"measure": ("latency measurement", "#56b4e9"), "finetune": ("fine-tuning", BLUE),
               "eval": ("evaluation", "#009e73"), "other": ("other (pruning, saving)", "#cccccc")}
STATE_MARKERS = {"pruned": ("pruned early", ORANGE, "triangle-down"), "failed": ("failed", RED, "x"),
                 "running": ("still running", PURPLE, "circle-open")}
MAX_IMPORTANCES = 15
LOG_TICKS = [m * 10**e for e in range(-1, 5) for m in (1, 2, 5)]


def _layout(height: int, **overrides) -> dict:
    """The shared sober layout (white, system fonts, legend on top), with ``overrides``."""
    return dict(template="plotly_white", height=height, margin=dict(l=60, r=20, t=40, b=50),
                font=dict(family="system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif", size=13),
                legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0), hoverlabel=dict(align="left")) | overrides


def _trial_axis(rows: list[TrialRow]) -> dict:
    """An x axis of trial numbers: whole numbers only (one tick each for a short study)."""
    return dict(title="trial number", dtick=1 if len(rows) <= 20 else None)


def _hover(row: TrialRow) -> str:
    ratio = f"<br>{fmt.ratio(row.param_ratio)} smaller" if row.param_ratio else ""
    return (f"<b>Trial {row.number}</b><br>Dice {fmt.dice(row.dice)}<br>Latency {fmt.ms(row.latency_ms)}"
            f"<br>Params {fmt.count(row.params)}{ratio}")


def _points(rows: list[TrialRow], name: str, **marker) -> go.Scatter:
    return go.Scatter(x=[r.latency_ms for r in rows], y=[r.dice for r in rows], mode="markers", name=name,
                      marker=marker, text=[_hover(r) for r in rows], hoverinfo="text")


def pareto_figure(info: ParetoInfo) -> go.Figure | None:
    """Dice against latency: Pareto front, other feasible, over budget, chosen trial, budget line."""
    if info.reason:
        return None
    fig = go.Figure(layout=_layout(480, xaxis=dict(title="median latency on the target CPU (ms, log scale)", type="log",
                                                   tickvals=LOG_TICKS),
                                   yaxis_title="validation Dice (mean foreground)", showlegend=True))
    fig.add_trace(_points(info.infeasible, "over budget (Dice before fine-tuning)", color=GREY, symbol="x", size=7))
    fig.add_trace(_points(info.dominated, "within budget", color=LIGHT_BLUE, size=8))
    front = _points(info.front, "best trade-offs (Pareto front)", color=BLUE, size=10)
    fig.add_trace(front.update(mode="lines+markers", line=dict(color=BLUE, shape="hv", width=1.5)))
    chosen = [r for r in info.front + info.dominated + info.infeasible if r.number == info.highlight]
    if chosen:
        fig.add_trace(_points(chosen, f"trial {chosen[0].number} (chosen)", color=ORANGE, symbol="star", size=18,
                              line=dict(color=INK, width=1)))
    if info.budget_ms is not None:
        # A legend entry whose points also keep the budget inside the x range, and a full-height line.
        line = dict(color=RED, dash="dash", width=1.5)
        dice = [r.dice for r in info.front + info.dominated + info.infeasible]
        fig.add_trace(go.Scatter(x=[info.budget_ms] * 2, y=[min(dice), max(dice)], mode="lines", line=line,
                                 name=f"latency budget {fmt.ms(info.budget_ms)}", hoverinfo="skip"))
        fig.add_shape(type="line", x0=info.budget_ms, x1=info.budget_ms, y0=0, y1=1, yref="paper", line=line)
    return fig


def history_figure(info: HistoryInfo) -> go.Figure | None:
    """Dice by trial number, best feasible Dice so far as a step line; pruned trials apart."""
    if info.reason:
        return None
    fig = go.Figure(layout=_layout(380, xaxis=_trial_axis(info.rows), yaxis_title="validation Dice", showlegend=True))
    groups = (("within budget", BLUE, "circle", lambda r: r.state == "complete" and r.feasible is not False),
              ("over budget (not fine-tuned)", GREY, "x", lambda r: r.state == "complete" and r.feasible is False),
              ("pruned early (last epoch's Dice)", ORANGE, "triangle-down", lambda r: r.state == "pruned"))
    for name, colour, symbol, keep in groups:
        rows = [r for r in info.rows if keep(r) and r.dice is not None]
        fig.add_trace(go.Scatter(x=[r.number for r in rows], y=[r.dice for r in rows], mode="markers", name=name,
                                 marker=dict(color=colour, symbol=symbol, size=7),
                                 text=[_hover(r) for r in rows], hoverinfo="text"))
    if info.best:
        last = max(r.number for r in info.rows)
        xs = [n for n, _ in info.best] + [last]
        ys = [d for _, d in info.best] + [info.best[-1][1]]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name="best within budget so far",
                                 line=dict(color=INK, shape="hv", width=2), hoverinfo="skip"))
    return fig


def time_figure(info: HistoryInfo) -> go.Figure | None:
    """Seconds per trial stacked by phase; pruned, failed and running trials marked on top."""
    if info.reason:
        return None
    rows = sorted(info.rows, key=lambda r: r.number)
    fig = go.Figure(layout=_layout(340, barmode="stack", bargap=0.15, xaxis=_trial_axis(rows),
                                   yaxis_title="time (s)", legend_traceorder="normal",
                                   showlegend=True))
    for phase, (name, colour) in PHASE_STYLE.items():
        fig.add_trace(go.Bar(x=[r.number for r in rows], y=[r.times[phase] for r in rows], name=name,
                             marker_color=colour, hovertemplate=f"trial %{{x}}: %{{y:.1f}} s {name}<extra></extra>"))
    for state, (name, colour, symbol) in STATE_MARKERS.items():
        marked = [r for r in rows if r.state == state]
        if marked:
            fig.add_trace(go.Scatter(
                x=[r.number for r in marked], y=[sum(r.times.values()) for r in marked], mode="markers", name=name,
                marker=dict(color=colour, symbol=symbol, size=9, line=dict(width=2, color=colour)),
                text=[f"Trial {r.number} {state}" + (f": {html.escape(r.note)}" if r.note else "") for r in marked],
                hoverinfo="text"))
    return fig


def heatmap_figure(info: LayersInfo) -> go.Figure | None:
    """Keep ratio per layer (columns) of the best feasible trials (rows, best on top)."""
    if info.heatmap_reason:
        return None
    labels = [f"trial {r.number} · Dice {fmt.dice(r.dice)} · {fmt.ms(r.latency_ms)}" for r in info.trials]
    fig = go.Figure(go.Heatmap(
        z=info.keep, x=[html.escape(name) for name in info.layers], y=labels, zmin=0, zmax=1, colorscale="Blues",
        texttemplate="%{z:.2f}", textfont=dict(size=10), colorbar=dict(title=dict(text="kept"), thickness=12),
        hovertemplate="%{y}<br>%{x}: %{z:.0%} of channels kept<extra></extra>", xgap=1, ygap=1))
    fig.update_layout(_layout(160 + 30 * len(labels), yaxis=dict(autorange="reversed"),
                              xaxis=dict(tickangle=-45), margin=dict(l=230, r=20, t=20, b=110)))
    return fig


def channels_figure(info: LayersInfo) -> go.Figure | None:
    """Channels per layer of the baseline and of the chosen model, side by side."""
    if info.channels_reason:
        return None
    layers = [html.escape(name) for name in info.baseline_channels]
    fig = go.Figure(layout=_layout(380, barmode="group", yaxis_title="output channels",
                                   xaxis=dict(tickangle=-45), margin=dict(l=60, r=20, t=40, b=110)))
    fig.add_trace(go.Bar(x=layers, y=list(info.baseline_channels.values()), name="baseline", marker_color=GREY))
    fig.add_trace(go.Bar(x=layers, y=[info.candidate_channels.get(k) for k in info.baseline_channels],
                         name=html.escape(info.candidate_label), marker_color=BLUE))
    return fig


def importance_figure(info: ImportanceInfo) -> go.Figure | None:
    """The most important parameters for one objective, most important on top."""
    if info.reason:
        return None
    top = list(info.importances.items())[:MAX_IMPORTANCES]
    fig = go.Figure(go.Bar(x=[v for _, v in top], y=[html.escape(k) for k, _ in top], orientation="h",
                           marker_color=BLUE, hovertemplate="%{y}: %{x:.2f}<extra></extra>"))
    fig.update_layout(_layout(90 + 24 * len(top), yaxis=dict(autorange="reversed"),
                              xaxis=dict(title="share of the total importance", tickformat=".0%"),
                              margin=dict(l=160, r=20, t=20, b=50)))
    return fig
