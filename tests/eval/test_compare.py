"""The comparison table's statistics: per-variant mean and sd over seeds, paired differences with a t interval."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from gbcosface.eval.compare import (
    RunResult,
    compare_runs,
    format_diff,
    format_markdown,
    format_text,
    metric_values,
    paired_interval,
    render_html,
    roc_overlay_png,
)


def _metrics(tar4: float | None, auc: float, rank1: float = 0.5, tar5: float | None = None) -> dict:
    """A metrics.json of the evaluation's shape, with chosen values."""
    cells = lambda conv: [  # noqa: E731
        {"far": 1e-5, "tar": tar5, "reason": None if tar5 is not None else "too few impostors"},
        {"far": 1e-4, "tar": tar4, "reason": None},
    ]
    return {"target": "IJBC", "flags": {"flip": False, "norm_score": True, "detector_score": True},
            "tar_at_far": {"nearest": cells("nearest"), "strict": cells("strict")}, "auc": auc,
            "roc": {"fpr": [0.0, 1e-4, 1e-2, 1.0], "tpr": [0.0, 0.4, 0.8, 1.0], "thresholds": [1.0, 0.5, 0.2, 0.0]},
            "identification": {"galleries": ["G1", "G2"], "combined": "G1+G2",
                               "insightface": {"mean": {"cmc": {"1": rank1, "5": 0.9},
                                                        "tpir_at_fpir": [{"fpir": 0.01, "tpir": 0.3}]},
                                               "G1+G2": {"cmc": {"1": rank1 + 0.01},
                                                         "tpir_at_fpir": [{"fpir": 0.01, "tpir": None}]}},
                               "open_set": {"mean": {"cmc": {"1": rank1 - 0.01},
                                                     "tpir_at_fpir": [{"fpir": 0.01, "tpir": 0.2}]}}}}


def test_metric_values_flattens_both_conventions_auc_and_1n_with_none_for_unmeasurable_cells():
    vals = metric_values(_metrics(0.7, 0.99, rank1=0.6))
    assert list(vals) == ["tar@1e-5/nearest", "tar@1e-4/nearest", "tar@1e-5/strict", "tar@1e-4/strict", "auc",
                          "rank1/insightface/mean", "tpir@1e-2/insightface/mean", "rank1/insightface/union",
                          "tpir@1e-2/insightface/union", "rank1/open_set/mean", "tpir@1e-2/open_set/mean"]
    assert vals["tar@1e-5/nearest"] is None and vals["tar@1e-4/strict"] == 0.7
    assert vals["rank1/insightface/union"] == 0.6 + 0.01 and vals["tpir@1e-2/insightface/union"] is None
    assert vals["rank1/open_set/mean"] == 0.6 - 0.01


def test_paired_interval_is_the_student_t_interval_of_the_differences():
    diffs = [0.010, 0.015, 0.012, 0.018]
    got = paired_interval(diffs, confidence=0.95)
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    assert got["n"] == n and got["mean"] == pytest.approx(mean, rel=1e-15) and got["sd"] == pytest.approx(sd, rel=1e-14)
    assert got["half_width"] == pytest.approx(half, rel=1e-14)
    assert (got["low"], got["high"]) == (got["mean"] - got["half_width"], got["mean"] + got["half_width"])
    assert got["excludes_zero"] is True
    # A wider confidence widens it; differences of both signs give an interval that contains 0.
    assert paired_interval(diffs, confidence=0.99)["half_width"] > got["half_width"]
    assert paired_interval([0.01, -0.012, 0.003], 0.95)["excludes_zero"] is False
    # scipy's own one-sample t interval agrees.
    low, high = stats.t.interval(0.95, n - 1, loc=mean, scale=stats.sem(diffs))
    assert got["low"] == pytest.approx(low, rel=1e-12) and got["high"] == pytest.approx(high, rel=1e-12)


def test_one_seed_gives_a_difference_but_no_interval_and_none_gives_nothing():
    one = paired_interval([0.02])
    assert one["mean"] == 0.02 and one["sd"] is None and one["low"] is None and one["high"] is None
    assert one["note"] == "n=1: one seed gives no interval" and one["excludes_zero"] is None
    assert format_diff(one) == "+2.00 (n=1: no interval)"
    none = paired_interval([])
    assert none["mean"] is None and format_diff(none) == "n/a"
    with pytest.raises(ValueError, match="confidence"):
        paired_interval([0.1, 0.2], confidence=1.0)


def test_compare_pairs_by_seed_and_leaves_out_seeds_one_side_cannot_measure():
    runs = [
        RunResult("gb", 0, _metrics(0.80, 0.990, tar5=0.50)), RunResult("gb", 1, _metrics(0.84, 0.992, tar5=None)),
        RunResult("gb", 2, _metrics(0.82, 0.991, tar5=0.54)),
        RunResult("cos", 0, _metrics(0.78, 0.989, tar5=0.49)), RunResult("cos", 1, _metrics(0.81, 0.990, tar5=0.52)),
        RunResult("cos", 2, _metrics(0.80, 0.990, tar5=0.50)), RunResult("arc", 0, _metrics(0.79, 0.989)),
    ]
    table = compare_runs(runs, baseline="cos")
    assert table["variants"] == ["gb", "cos", "arc"] and table["seeds"] == {"gb": [0, 1, 2], "cos": [0, 1, 2],
                                                                            "arc": [0]}
    s = table["stats"]["gb"]["tar@1e-4/nearest"]
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.82, rel=1e-15)
    assert s["sd"] == pytest.approx(0.02, rel=1e-13) and s["values"] == {0: 0.80, 1: 0.84, 2: 0.82}
    d = table["diffs"]["gb"]["tar@1e-4/nearest"]
    assert d["seeds"] == [0, 1, 2] and d["n"] == 3
    assert d["mean"] == pytest.approx(((0.80 - 0.78) + (0.84 - 0.81) + (0.82 - 0.80)) / 3, rel=1e-13)
    # Seed 1 of gb has no TAR@1e-5: that pair is left out, and the mean over gb's seeds counts 2.
    d5 = table["diffs"]["gb"]["tar@1e-5/nearest"]
    assert d5["seeds"] == [0, 2] and d5["n"] == 2
    assert table["stats"]["gb"]["tar@1e-5/nearest"]["n"] == 2
    # arc has only seed 0: a difference without an interval.
    assert table["diffs"]["arc"]["auc"]["n"] == 1 and table["diffs"]["arc"]["auc"]["low"] is None
    assert "cos" not in table["diffs"]


def test_compare_refuses_an_unknown_baseline_and_a_seed_twice():
    runs = [RunResult("gb", 0, _metrics(0.8, 0.99)), RunResult("cos", 0, _metrics(0.7, 0.98))]
    with pytest.raises(ValueError, match="baseline 'arc'"):
        compare_runs(runs, baseline="arc")
    with pytest.raises(ValueError, match="two runs of variant 'gb' with seed 0"):
        compare_runs([*runs, RunResult("gb", 0, _metrics(0.8, 0.99))], baseline="cos")


def test_tables_show_mean_sd_and_the_interval_in_points():
    runs = [RunResult(v, s, _metrics(t, 0.99)) for v, s, t in
            [("gb", 0, 0.80), ("gb", 1, 0.84), ("cos", 0, 0.78), ("cos", 1, 0.81)]]
    table = compare_runs(runs, baseline="cos")
    md = format_markdown(table, "IJBC")
    row = next(line for line in md.splitlines() if line.startswith("| TAR@FAR=1e-4 (nearest)"))
    d = table["diffs"]["gb"]["tar@1e-4/nearest"]
    assert row == (f"| TAR@FAR=1e-4 (nearest) | 82.00 ± 2.83 (n=2) | 79.50 ± 2.12 (n=2) | "
                   f"+2.50 [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] |")
    assert "| metric | gb | cos | Δ gb − cos |" in md
    text = format_text(table, ["auc"])
    assert text.splitlines()[1].startswith("AUC") and len(text.splitlines()) == 4
    page = render_html(table, roc_overlay_png({"gb": {0: ([0, 1e-4, 1], [0, 0.5, 1])}}, "ROC"), "t", {"a": "b"})
    assert page.count("<tr>") >= len(table["metrics"]) + 1 and "data:image/png;base64," in page
