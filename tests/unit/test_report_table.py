"""The report's trial table (a real HTML table, the best row marked) and its empty plots (a sentence instead of
empty axes), on studies of fake trials. Sorting by a click runs in headless Chromium:
tests/e2e/test_report_sorting.py."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import optuna
from optuna.trial import TrialState

from tests.unit.test_report import add, lengths_study
from tuner.points import Point
from tuner.report import render_report
from tuner.report_table import EMPTY


def table_of(page: str) -> ET.Element:
    """The page's trial table, parsed strictly (it must be well formed: thead, tbody, every tag closed)."""
    found = re.search(r'<table id="results".*?</table>', page, re.S)
    assert found, "no trial table"
    return ET.fromstring(found.group(0))


def one_length_study(storage: str | None = None, failed: bool = True) -> optuna.Study:
    """Three completed points at the space's one sequence length, and (`failed`) one out of memory."""
    study = optuna.create_study(study_name="one", storage=storage, direction="maximize")
    study.set_user_attr("objectives", ["tokens_per_s"])
    study.set_user_attr("space", {"data": {"sequence_length": 128}})
    for mb, tokens in ((2, 300.0), (4, 900.0), (8, 600.0)):
        add(
            study,
            Point(mb, 0),
            TrialState.COMPLETE,
            tokens,
            gb=0.1 * mb,
            peak_reserved_gb=0.1 * mb,
            predicted_mem_gb=0.11 * mb,
        )
    if failed:
        add(study, Point(8, 1), TrialState.FAIL, failure_category="oom", failure_reason="out of memory")
    return study


def test_the_trial_table_has_a_head_a_body_and_the_best_row_marked() -> None:
    study = lengths_study()
    table = table_of(render_report(study, "sqlite:///x.db"))
    heads = [th.text for th in table.findall("./thead/tr/th")]
    assert heads[:8] == ["number", "point", "state", "tp", "sp", "dp", "rank", "tokens_per_s"]
    rows = table.findall("./tbody/tr")
    assert len(rows) == len(study.trials) and all(len(r) == len(heads) for r in rows)
    marked = [r for r in rows if r.get("class") == "best-row"]
    assert [r.get("data-number") for r in marked] == ["1"] == [rows[0].get("data-number")]  # best first
    assert "\u2605 best" in "".join(marked[0].itertext())
    by_number = {r.get("data-number"): r for r in rows}
    failed = [t.number for t in study.trials if t.state == TrialState.FAIL]
    tokens = heads.index("tokens_per_s")
    assert by_number[str(failed[0])][tokens].get("data-value") == ""  # sorts last whichever way
    assert by_number["1"][tokens].get("data-value") == "1000.0" and by_number["1"][tokens].text == "1,000"
    assert by_number["1"][tokens].get("class") == "num"
    per_length = [r.get("data-number") for r in rows if "best at its length" in "".join(r.itertext())]
    assert sorted(per_length, key=int) == ["1", "5", "11"]


def test_a_long_reason_is_cut_in_the_cell_and_whole_in_its_tooltip() -> None:
    study = one_length_study(failed=False)
    reason = "out of memory: " + "x" * 100
    add(study, Point(8, 1), TrialState.FAIL, failure_category="oom", failure_reason=reason)
    table = table_of(render_report(study, "sqlite:///x.db"))
    cell = next(td for td in table.iter("td") if (td.text or "").startswith("out of memory"))
    assert cell.text is not None and len(cell.text) == 60 and cell.text.endswith("...")
    assert cell.get("title") == reason == cell.get("data-value")


def test_a_plot_with_nothing_to_show_says_so_instead_of_drawing_empty_axes() -> None:
    only_failed = optuna.create_study(study_name="failed", direction="maximize")
    add(only_failed, Point(8, 1), TrialState.FAIL, failure_category="oom", failure_reason="out of memory")
    page = render_report(only_failed, "sqlite:///x.db")
    assert re.findall(r'data-empty="([a-z]+)"', page) == ["throughput", "memory", "lengths"]
    assert re.findall(r'data-plot="([a-z]+)"', page) == ["timeline", "failures"]
    assert EMPTY["throughput"] in page and EMPTY["memory"] in page
    assert page.count("plotly.js v") == 1  # inlined once, with the first plot drawn (the timeline)
    assert "No trial completed: nothing to recommend." in page

    all_done = render_report(one_length_study(failed=False), "sqlite:///x.db")
    assert re.findall(r'data-empty="([a-z]+)"', all_done) == ["lengths", "failures"]
    assert "Every trial ran at one sequence length (128 tokens), so there is nothing to plot against" in all_done
    assert "Every trial completed: none failed and none was pruned" in all_done
    assert re.findall(r'data-plot="([a-z]+)"', all_done) == ["throughput", "memory", "timeline"]


def test_a_study_over_several_lengths_draws_them_and_no_memory_plot_without_predictions() -> None:
    page = render_report(lengths_study(), "sqlite:///x.db")  # its fake trials carry no predicted memory
    assert re.findall(r'data-empty="([a-z]+)"', page) == ["memory"]
    assert re.findall(r'data-plot="([a-z]+)"', page) == [
        "throughput",
        "lengths",
        "lengthmemory",
        "timeline",
        "failures",
    ]


def test_a_priced_studys_cost_is_a_column_beside_tokens_per_s() -> None:
    study = optuna.create_study(study_name="priced", direction="maximize")
    for mb, tokens in ((2, 300.0), (4, 900.0)):
        add(study, Point(mb, 0), TrialState.COMPLETE, tokens, usd_per_million_tokens=9000.0 / tokens)
    table = table_of(render_report(study, "sqlite:///x.db"))
    heads = [th.text for th in table.findall("./thead/tr/th")]
    assert heads[heads.index("tokens_per_s") + 1] == "usd_per_million_tokens"
    cost = heads.index("usd_per_million_tokens")
    assert [row[cost].get("data-value") for row in table.findall("./tbody/tr")] == ["10.0", "30.0"]
