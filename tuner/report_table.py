"""The report's trial table and its empty plots: a real HTML table a reviewer sorts by clicking a column.

Each cell keeps its raw value in `data-value` (empty where the trial has none), so the inline script sorts
numbers as numbers, text as text, and always puts the empty cells last (failed and pruned trials have no
throughput: they stay below the measured ones whichever way a column is sorted). The script is a few lines
of plain JavaScript in the page: the report opens offline. A plot with nothing to show is replaced by a
sentence saying why, not drawn as empty axes.
"""

from __future__ import annotations

import html
import numbers
from typing import TYPE_CHECKING, Any

from tuner.results import PARALLEL_COLUMNS, per_length_lines, table_columns

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

TABLE_STYLE = """<style>
table.trials { border-collapse: collapse; font-size: 0.85rem; width: 100%; }
.table-scroll { overflow-x: auto; }
table.trials th, table.trials td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left;
  white-space: nowrap; }
table.trials td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.trials th { cursor: pointer; background: #f0f0f0; position: sticky; top: 0; white-space: nowrap; }
table.trials th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.trials th[aria-sort="descending"]::after { content: " \\25BC"; }
table.trials tr.best-row { background: #e3f6ea; font-weight: bold; }
table.trials .marker { color: #2a7; font-weight: bold; white-space: nowrap; }
.empty-plot { color: #555; font-style: italic; border: 1px dashed #ccc; padding: 0.75rem 1rem; }
</style>"""

SORT_SCRIPT = """<script>
(function () {
  var table = document.getElementById("results");
  if (!table || !table.tHead) { return; }
  var heads = table.tHead.rows[0].cells;
  function value(row, index) { return row.cells[index].getAttribute("data-value") || ""; }
  function sortBy(index) {
    var th = heads[index];
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    for (var i = 0; i < heads.length; i++) { heads[i].removeAttribute("aria-sort"); }
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = value(a, index), y = value(b, index);
      if (x === "" || y === "") { return (x === "" ? 1 : 0) - (y === "" ? 1 : 0); }  /* none last, both ways */
      var nx = Number(x), ny = Number(y);
      var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  for (var i = 0; i < heads.length; i++) {
    heads[i].addEventListener("click", sortBy.bind(null, i));
    heads[i].addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(e.target.cellIndex); }
    });
  }
})();
</script>"""


WHOLE = ("number", "rank", "measurements", *PARALLEL_COLUMNS)  # counts, shown without a decimal point


def _missing(value: Any) -> bool:
    """None, NaN or pandas' NA: a trial without this figure."""
    import pandas as pd

    return value is None or (not isinstance(value, (str, list, tuple, dict)) and bool(pd.isna(value)))


def _cell(column: str, value: Any, numeric: bool, marker: str = "") -> str:
    """One cell: the value shown (numbers as the text table shows them, long reasons cut with the whole text
    as a tooltip), the raw value to sort by, right-aligned in a numeric column."""
    align = ' class="num"' if numeric else ""
    if _missing(value):
        return f'<td{align} data-value="">-{marker}</td>'
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        number = float(value)  # type: ignore[arg-type]
        shown = f"{number:.0f}" if column in WHOLE else f"{number:,.4g}"
        return f'<td{align} data-value="{number!r}">{shown}{marker}</td>'
    text = str(value)
    shown = text if len(text) <= 60 else text[:57] + "..."
    title = f' title="{html.escape(text)}"' if shown != text else ""
    return f'<td data-value="{html.escape(text)}"{title}>{html.escape(shown)}{marker}</td>'


def trials_table(frame: pd.DataFrame, best_number: int | None) -> str:
    """The trial table as HTML (thead/tbody), the best trial's row marked, then the best at each length."""
    from pandas.api.types import is_numeric_dtype

    columns = table_columns(frame)
    numeric = {c: is_numeric_dtype(frame[c]) and frame[c].dtype != bool for c in columns}
    heads = "".join(
        f'<th scope="col" tabindex="0" data-column="{c}" title="click to sort">{PARALLEL_COLUMNS.get(c, c)}</th>'
        for c in columns
    )
    per_length = {int(n) for n in frame.loc[frame["best_at_length"].fillna(False).astype(bool), "number"]}
    rows = []
    for record in frame[columns].to_dict("records"):
        number = int(record["number"])
        marked = number == best_number
        marker = ' <span class="marker">&#9733; best</span>' if marked else ""
        if number in per_length:
            marker += ' <span class="marker">best at its length</span>'
        cells = "".join(_cell(c, record[c], numeric[c], marker if c == "number" else "") for c in columns)
        best_class = ' class="best-row"' if marked else ""
        rows.append(f'<tr data-number="{number}"{best_class}>{cells}</tr>')
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in per_length_lines(frame))
    footer = f"<p>Best at each sequence length:</p><ul id='results-per-length'>{lines}</ul>" if lines else ""
    return (
        "<p>Click a column to sort by it (again to reverse); trials without a value stay last.</p>"
        f'<div class="table-scroll"><table id="results" class="trials"><thead><tr>{heads}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{footer}"
    )


def has_data(fig: go.Figure) -> bool:
    """Whether any trace of `fig` has a point to draw (an axis, a budget line or a title alone is not one)."""
    for trace in fig.data:
        for axis in ("x", "y"):
            values = getattr(trace, axis, None)
            if values is not None and any(not _missing(v) for v in values):
                return True
    return False


EMPTY = {
    "throughput": "No trial completed, so there is no throughput to plot against the micro-batch size.",
    "memory": "No trial has both a predicted and a measured peak memory, so there is nothing to compare.",
    "lengths": "No family completed at more than one sequence length, so there is nothing to plot against it.",
    "lengthmemory": "No family completed at more than one sequence length, so there is no memory to plot.",
    "pareto": "No trial completed, so there is no Pareto front to draw.",
    "timeline": "No trial has started, so there is no timeline to draw.",
    "failures": "Every trial completed: none failed and none was pruned, so there is nothing to plot.",
}


def empty_plot(name: str, sentence: str | None = None) -> str:
    """What stands in for a plot with nothing to show: one sentence saying why."""
    text = sentence or EMPTY.get(name, "Nothing to plot.")
    return f'<div class="plot-empty" data-empty="{name}"><p class="empty-plot">{html.escape(text)}</p></div>'
