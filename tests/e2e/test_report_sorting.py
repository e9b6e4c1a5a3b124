"""`tuner report`'s trial table in headless Chromium: clicking a column header sorts the rows (numbers as numbers,
trials without a value last both ways), the best row is marked, and a plot with nothing to show is a sentence.

The click is scripted: a copy of the report gets a few lines that click the headers once the page has loaded
and write the row order after each click into the page, and Chromium's --dump-dom returns the page after them.
"""

from __future__ import annotations

import re
from pathlib import Path

from optuna.trial import TrialState

from tests.e2e.test_cli import tuner
from tests.e2e.test_review import render
from tests.unit.test_report_table import one_length_study

CLICKS = """<script>
window.addEventListener("load", function () {
  function order(id) {
    var rows = document.querySelectorAll("#results tbody tr"), numbers = [];
    for (var i = 0; i < rows.length; i++) { numbers.push(rows[i].getAttribute("data-number")); }
    var out = document.createElement("pre");
    out.id = id;
    out.textContent = numbers.join(",");
    document.body.appendChild(out);
  }
  var tokens = document.querySelector('#results th[data-column="tokens_per_s"]');
  order("before");
  tokens.click(); order("ascending");
  tokens.click(); order("descending");
  document.querySelector('#results th[data-column="point"]').click(); order("by-point");
});
</script>"""


def order(dom: str, name: str) -> list[int]:
    found = re.search(rf'<pre id="{name}">([0-9,]*)</pre>', dom)
    assert found, f"the scripted clicks did not record {name!r}"
    return [int(n) for n in found.group(1).split(",")]


def test_clicking_a_header_sorts_the_trials_and_the_best_row_is_marked(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'one.sqlite3'}"
    study = one_length_study(url)  # 300, 900 and 600 tokens/s, and a trial that ran out of memory
    out = tmp_path / "report.html"
    done = tuner("report", "--study", "one", "--storage", url, "--output", str(out), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    clicked = tmp_path / "clicked.html"
    clicked.write_text(out.read_text().replace("</body></html>", CLICKS + "</body></html>"))
    dom, log = render(clicked, tmp_path)
    assert "Uncaught" not in log, log[-3000:]
    assert re.search(r'<p id="script-errors" hidden=""', dom), "a script error was recorded in the page"

    tokens = {t.number: t.user_attrs.get("tokens_per_s") for t in study.trials}
    failed = [n for n, v in tokens.items() if v is None]
    done_fast_first = sorted((n for n in tokens if n not in failed), key=lambda n: -tokens[n])
    assert order(dom, "before") == [*done_fast_first, *failed]  # as ranked: best first
    assert order(dom, "ascending") == [*reversed(done_fast_first), *failed]  # numerically; the failure last
    assert order(dom, "descending") == [*done_fast_first, *failed]  # and still last the other way
    points = {t.number: t.user_attrs["point"] for t in study.trials}
    assert order(dom, "by-point") == sorted(points, key=lambda n: points[n])
    assert re.search(r'data-column="point"[^>]*aria-sort="ascending"', dom)

    best = done_fast_first[0]
    row = re.search(rf'<tr data-number="{best}" class="best-row">(.*?)</tr>', dom)
    assert row and "\u2605 best" in row.group(1), "the best row is not marked"
    assert dom.count('class="best-row"') == 1
    assert re.findall(r'data-plot="([a-z]+)"', dom) == ["throughput", "memory", "timeline", "failures"]
    for name, chunk in zip(["throughput", "memory"], dom.split('data-plot="')[1:3], strict=True):
        assert 'class="main-svg"' in chunk, f"plot {name} was not drawn"
    empty = re.search(r'data-empty="lengths"><p class="empty-plot">([^<]+)</p>', dom)
    assert empty and empty.group(1).startswith("Every trial ran at one sequence length (128 tokens)")
    assert study.trials[-1].state == TrialState.FAIL
