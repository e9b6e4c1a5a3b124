"""`tuner report` in headless Chromium on a study of fake trials that searched tensor parallelism and several
sequence lengths: the throughput- and memory-against-length plots draw, and the trials table shows tp, sp and
dp. (tests/e2e/test_review.py renders the report of a real study.)"""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.test_cli import tuner
from tests.e2e.test_review import render
from tests.unit.test_report import lengths_study


def test_the_length_plots_draw_in_a_real_browser(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lengths.sqlite3'}"
    lengths_study(url)
    out = tmp_path / "report.html"
    done = tuner("report", "--study", "lengths", "--storage", url, "--output", str(out), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    dom, log = render(out, tmp_path)
    assert "Uncaught" not in log, log[-3000:]
    assert re.search(r'<p id="script-errors" hidden=""', dom), "a script error was recorded in the page"
    plots = re.findall(r'data-plot="([a-z]+)"', dom)
    assert plots == ["throughput", "lengths", "lengthmemory", "timeline", "failures"]
    assert re.findall(r'data-empty="([a-z]+)"', dom) == ["memory"]  # no predicted memory: a sentence, no axes
    for name, chunk in zip(plots, dom.split('data-plot="')[1:], strict=True):
        assert 'class="main-svg"' in chunk, f"plot {name} was not drawn"
    lengths = dom.split('data-plot="lengths"')[1].split('data-plot="lengthmemory"')[0]
    assert "Throughput by sequence length" in lengths and "z0 tp2" in lengths  # title and a family's legend
    memory = dom.split('data-plot="lengthmemory"')[1].split('data-plot="timeline"')[0]
    assert "Peak memory per device by sequence length" in memory and "budget 1 GB" in memory
    table = dom.split('id="results"')[1]
    heads = re.findall(r'<th scope="col"[^>]*>([^<]+)</th>', table)
    assert heads[:7] == ["number", "point", "state", "tp", "sp", "dp", "rank"]
    assert "Best at each sequence length:" in table and "sequence_length 256: trial 11 mb4 z0 tp2 s256" in table
    assert "sequence_length 256: trial 11 mb4 z0 tp2 s256" in dom.split('id="best"')[1].split("</div>")[0]
