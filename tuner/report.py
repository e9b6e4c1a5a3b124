"""`tuner report`: one self-contained HTML file with the evidence a reviewer needs at a glance.

Plots are plotly figures (Optuna's own for the Pareto front and the timeline), with plotly.js inlined once
so the file opens offline. A small script at the top records any script error into the page itself
(#script-errors), so a reader (and the browser test) sees when a plot failed to draw.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import optuna

from tuner.cost import priced
from tuner.errors import SpaceError
from tuner.knobs import MAIN, SCALE, family_label
from tuner.parallel import LENGTH
from tuner.ranking import best, best_per_length, objective_names, rank_study
from tuner.report_table import SORT_SCRIPT, TABLE_STYLE, empty_plot, has_data, trials_table
from tuner.results import results_frame
from tuner.store import redact

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

ERROR_HOOK = """<script>
window.tunerErrors = [];
window.addEventListener("error", function (e) {
  window.tunerErrors.push(String(e.message || e));
  var box = document.getElementById("script-errors");
  if (box) { box.textContent = "Script errors: " + window.tunerErrors.join("; "); box.hidden = false; }
});
</script>"""

STYLE = """<style>
body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 1200px; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.best { border: 2px solid #2a7; padding: 0.5rem 1rem; background: #f3fbf6; }
pre { background: #f6f6f6; padding: 0.75rem; overflow-x: auto; font-size: 0.85rem; }
#script-errors { color: #b00; font-weight: bold; }
.plot { margin-bottom: 1.5rem; }
</style>"""


def _family(row: pd.Series) -> str:
    return family_label(row)


def throughput_figure(frame: pd.DataFrame) -> go.Figure:
    """Throughput against micro-batch size, one line per family (stage, offload, checkpointing)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    done = frame[(frame["state"] == "COMPLETE") & frame["repeat_of"].isna()].copy()
    if not done.empty:
        done["family"] = done.apply(_family, axis=1)
        done["tokens"] = done["mean_of_measurements"].fillna(done["tokens_per_s"])
        for family, group in done.groupby("family", sort=True):
            group = group.sort_values(SCALE.name)
            fig.add_trace(
                go.Scatter(
                    x=group[SCALE.name], y=group["tokens"], mode="lines+markers", name=str(family),
                    text=group["point"], hovertemplate="%{text}<br>%{y:,.0f} tokens/s<extra></extra>",
                )
            )  # fmt: skip
    fig.update_layout(
        title="Throughput by micro-batch size, per family", xaxis_title="micro-batch size per device",
        yaxis_title="tokens/s", xaxis_type="log", xaxis_dtick=0.30103,
    )  # fmt: skip
    return fig


MEMORY_HOVER = "%{text}<br>predicted %{x:.2f} GB, measured %{y:.2f} GB<extra></extra>"


def memory_figure(frame: pd.DataFrame, budget_gb: float | None) -> go.Figure:
    """The memory model's calibrated prediction against the measured peak, with the budget and y = x."""
    import plotly.graph_objects as go

    fig = go.Figure()
    # what the budget enforces and the model is calibrated to: reserved on a GPU (equal to the peak RSS on CPU)
    measured = "peak_reserved_gb" if "peak_reserved_gb" in frame else "peak_mem_gb"
    both = frame.dropna(subset=["predicted_mem_gb", measured])
    if not both.empty:
        fig.add_trace(
            go.Scatter(
                x=both["predicted_mem_gb"], y=both[measured], mode="markers", name="trials",
                text=both["point"], hovertemplate=MEMORY_HOVER,
            )
        )  # fmt: skip
        top = float(max(both["predicted_mem_gb"].max(), both[measured].max())) * 1.05
        fig.add_trace(go.Scatter(x=[0, top], y=[0, top], mode="lines", name="measured = predicted"))
    if budget_gb:
        fig.add_hline(y=budget_gb, line_dash="dash", annotation_text=f"budget {budget_gb:g} GB")
    fig.update_layout(
        title="Memory: predicted against measured peak per device",
        xaxis_title="predicted GB",
        yaxis_title="measured GB (GPU: reserved by PyTorch)",
    )
    return fig


def layout_label(row: pd.Series) -> str:
    """A family in words without the sequence length (`z1 tp2 ckpt`; `z0` alone): one line across lengths."""
    parts = [k.label(row[k.name]) for k in MAIN if not k.scale and k.section != "data" and k.name in row]
    return " ".join(p for p in parts if p) or "-"


def fastest_per_length(frame: pd.DataFrame) -> pd.DataFrame:
    """For each family (layout_label) and sequence length, its fastest completed point (rule 1 of tuner.guided:
    a family's throughput at a length is its best micro-batch's), with the mean of repeats where there are."""
    done = frame[(frame["state"] == "COMPLETE") & frame["repeat_of"].isna() & frame[LENGTH].notna()].copy()
    if done.empty:
        return done
    done["family"] = done.apply(layout_label, axis=1)
    done["tokens"] = done["mean_of_measurements"].fillna(done["tokens_per_s"])
    done = done.dropna(subset=["tokens"])
    return done.loc[done.groupby(["family", LENGTH])["tokens"].idxmax()].sort_values(["family", LENGTH])


def length_figures(frame: pd.DataFrame, budget_gb: float | None) -> list[tuple[str, go.Figure]]:
    """Where the study searched several sequence lengths: tokens/s and peak memory against the length, one line
    per family, each point the family's fastest micro-batch at that length (the same point in both plots)."""
    import plotly.graph_objects as go

    if LENGTH not in frame or frame[LENGTH].nunique() < 2:
        return []
    fastest = fastest_per_length(frame)
    tokens, memory = go.Figure(), go.Figure()
    for family, group in fastest.groupby("family", sort=True):
        text = group["point"]
        tokens.add_trace(
            go.Scatter(
                x=group[LENGTH], y=group["tokens"], mode="lines+markers", name=str(family), text=text,
                hovertemplate="%{text}<br>%{y:,.0f} tokens/s<extra></extra>",
            )
        )  # fmt: skip
        memory.add_trace(
            go.Scatter(
                x=group[LENGTH], y=group["peak_mem_gb"], mode="lines+markers", name=str(family), text=text,
                hovertemplate="%{text}<br>peak %{y:.2f} GB<extra></extra>",
            )
        )  # fmt: skip
    if budget_gb:
        memory.add_hline(y=budget_gb, line_dash="dash", annotation_text=f"budget {budget_gb:g} GB")
    axis = {"xaxis_title": "sequence length (tokens per sample)", "xaxis_type": "log", "xaxis_dtick": 0.30103}
    tokens.update_layout(
        title="Throughput by sequence length, per family (its fastest micro-batch at each length)",
        yaxis_title="tokens/s", **axis,
    )  # fmt: skip
    memory.update_layout(
        title="Peak memory per device by sequence length (the same points)", yaxis_title="peak GB", **axis
    )
    return [("lengths", tokens), ("lengthmemory", memory)]


def failures_figure(frame: pd.DataFrame) -> go.Figure:
    """How many trials failed, by category, and how many the memory model pruned."""
    import plotly.graph_objects as go

    failed = frame[frame["state"] == "FAIL"]["failure_category"].fillna("unknown").value_counts()
    counts = {str(k): int(v) for k, v in failed.items()}
    pruned = int((frame["state"] == "PRUNED").sum())
    if pruned:
        counts["pruned (predicted not to fit)"] = pruned
    fig = go.Figure(go.Bar(x=list(counts), y=list(counts.values())))
    fig.update_layout(title="Trials that did not complete, by category", yaxis_title="trials")
    return fig


def _figures(study: optuna.Study, frame: pd.DataFrame) -> list[tuple[str, go.Figure | str]]:
    """The plots in order; a sentence instead of a plot where the study has nothing to show for it."""
    from optuna.visualization import plot_pareto_front, plot_timeline

    names = objective_names(study)
    budget = study.user_attrs.get("space", {}).get("hardware", {}).get("device_memory_gb")
    figures: list[tuple[str, go.Figure | str]] = [
        ("throughput", throughput_figure(frame)), ("memory", memory_figure(frame, budget))
    ]  # fmt: skip
    figures += length_figures(frame, budget) or [("lengths", _one_length(study, frame))]
    if len(names) > 1 and any(t.values for t in study.best_trials):
        figures.append(("pareto", plot_pareto_front(study, target_names=names)))
    figures.append(("timeline", plot_timeline(study)))
    figures.append(("failures", failures_figure(frame)))
    return figures


def _one_length(study: optuna.Study, frame: pd.DataFrame) -> str:
    """Why there is no plot against the sequence length: the study measured one."""
    lengths = sorted({int(n) for n in frame[LENGTH].dropna()}) if LENGTH in frame else []
    if not lengths:
        given = (study.user_attrs.get("space") or {}).get("data", {}).get("sequence_length")
        lengths = given if isinstance(given, list) else [given] if isinstance(given, int) else []
    at = f" ({lengths[0]} tokens)" if len(lengths) == 1 else ""
    return f"Every trial ran at one sequence length{at}, so there is nothing to plot against the length."


def _best_section(study: optuna.Study) -> str:
    top = best(rank_study(study))
    if top is None or top.mean is None:
        return '<div class="best"><p>No trial completed: nothing to recommend.</p></div>'
    trial = top.trial
    names = objective_names(study)
    value = f"{top.mean:,.4g}" + (f" (mean of {top.measurements} measurements)" if top.measurements > 1 else "")
    config = json.dumps(trial.user_attrs.get("ds_config", {}), indent=2, sort_keys=True)
    return (
        '<div class="best" id="best">'
        f"<h2>Best configuration: trial {trial.number}, {html.escape(str(trial.user_attrs.get('point', '')))}</h2>"
        f"<p>{html.escape(names[0])} = {value}; peak memory "
        f"{trial.user_attrs.get('peak_mem_gb', float('nan')):.3g} GB per device{priced(trial.user_attrs)}.</p>"
        f"<p>Export it: <code>tuner export --study {html.escape(study.study_name)} --output ds_config.json</code></p>"
        f"<pre id='best-ds-config'>{html.escape(config)}</pre>{_per_length(study)}</div>"
    )


def _per_length(study: optuna.Study) -> str:
    """The best at each sequence length, where the study searched several (each length its own workload)."""
    per_length = best_per_length(rank_study(study))
    if not per_length:
        return ""
    name = objective_names(study)[0]
    items = "".join(
        f"<li>sequence_length {n}: {html.escape(r.describe(name))} (<code>--trial {r.number}</code>)</li>"
        for n, r in per_length.items()
    )
    return f"<p>Best at each sequence length:</p><ul id='best-per-length'>{items}</ul>"


def render_report(study: optuna.Study, storage_url: str) -> str:
    """The whole report as one HTML document (plotly.js inlined once)."""
    frame = results_frame(study)
    if frame.empty:
        raise SpaceError("--study", f"study {study.study_name!r} has no trials to report yet; run tuner search first")
    parts, inlined = [], False
    for name, fig in _figures(study, frame):
        if isinstance(fig, str) or not has_data(fig):  # say why, not empty axes
            parts.append(empty_plot(name, fig if isinstance(fig, str) else None))
            continue
        fig.update_layout(height=460)
        body = fig.to_html(full_html=False, include_plotlyjs=not inlined, div_id=f"plot-{name}")
        inlined = True  # plotly.js once, with the first plot drawn
        parts.append(f'<div class="plot" data-plot="{name}">{body}</div>')
    top = best(rank_study(study))  # its row is marked in the table
    counts = frame["state"].value_counts().to_dict() if not frame.empty else {}
    summary = ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items())) or "no trials"
    title = f"tuner report: study {study.study_name}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            ERROR_HOOK,
            STYLE,
            TABLE_STYLE,
            "</head><body>",
            f"<h1>{html.escape(title)}</h1>",
            '<p id="script-errors" hidden></p>',
            f"<p>Storage {html.escape(redact(storage_url))}; {summary}; written "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.</p>",
            _best_section(study),
            "<h2>Plots</h2>",
            *parts,
            "<h2>All trials, best first</h2>",
            trials_table(frame, top.number if top else None),
            SORT_SCRIPT,
            "</body></html>",
        ]
    )
