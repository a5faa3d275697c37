import functools
import json
import math

import numpy as np
import pytest
from helpers.evaluation import make_evaluation, noisy
from sklearn.metrics import accuracy_score, f1_score
from statsmodels.stats.contingency_tables import SquareTable

from emodis_ray.core.scores import accuracy, macro_f1
from emodis_ray.data.labels import majority_chance_f1
from emodis_ray.evaluation.records import Comparison, Estimate, Evaluation, compare
from emodis_ray.evaluation.stats import (
    above_chance,
    bootstrap_ci,
    chance_levels,
    contingency,
    leakage,
    leakage_score,
    paired_bootstrap_diff,
    stuart_maxwell,
)


def preds_from_table(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two prediction vectors whose contingency table is ``table`` (rows A, columns B)."""
    a, b = np.nonzero(table)
    counts = table[a, b]
    return np.repeat(a, counts), np.repeat(b, counts)


# --- metrics and chance -------------------------------------------------------------------------------
def test_macro_f1_and_accuracy_equal_sklearn():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 3, 0, 1, 2, 0])
    yhat = np.array([0, 1, 0, 1, 2, 2, 0, 0, 0, 1, 2, 3])  # class 4 absent from both
    expected = f1_score(y, yhat, average="macro", labels=[0, 1, 2, 3, 4], zero_division=0)
    assert macro_f1(y, yhat) == pytest.approx(expected)
    assert macro_f1(y, yhat, num_classes=5) != pytest.approx(f1_score(y, yhat, average="macro"))  # absent class
    assert accuracy(y, yhat) == pytest.approx(accuracy_score(y, yhat))


def test_chance_macro_f1_is_the_majority_class_value_by_hand():
    y = np.array([0] * 6 + [1] * 2 + [2] + [3])  # majority share p = 0.6
    by_hand = (2 * 0.6 * 1.0 / (0.6 + 1.0)) / 5  # F1 of the majority class (precision p, recall 1); others 0
    emo_chance, spk_chance = chance_levels(y, np.array([7, 7, 7, 3, 3, 1, 1, 1, 1, 1]))
    assert emo_chance == pytest.approx(by_hand) == pytest.approx(0.15)
    assert emo_chance == pytest.approx(macro_f1(y, np.zeros_like(y)))  # always predicting the majority
    assert emo_chance == pytest.approx(majority_chance_f1(y))
    assert spk_chance == pytest.approx(0.5)


def test_leakage_score_bounds():
    chances = (0.15, 0.05)
    assert leakage_score(0.15, 0.05, chances) == 0.0  # at chance
    assert leakage_score(1.0, 1.0, chances) == pytest.approx(1.0)  # perfect
    assert leakage_score(0.05, 0.0, chances) == 0.0  # below chance floors at 0
    parts = leakage(0.575, 0.05, chances)  # halfway above chance in one direction only
    assert parts.emo_from_spk == pytest.approx(0.5) and parts.spk_from_emo == 0.0
    assert parts.score == pytest.approx(0.25)
    assert above_chance(0.3, 1.0) == 0.0  # a degenerate chance of 1 does not divide by zero


# --- bootstrap ---------------------------------------------------------------------------------------------
def test_bootstrap_ci_contains_point_narrows_with_data_and_is_seeded():
    rng = np.random.default_rng(0)
    widths = []
    for n_clips in (100, 2000):
        y = rng.integers(0, 5, n_clips)
        yhat = noisy(y, 5, 0.6, seed=n_clips)
        point, lo, hi = bootstrap_ci(macro_f1, y, yhat, n=500, seed=1)
        assert point == pytest.approx(macro_f1(y, yhat))
        assert lo <= point <= hi
        widths.append(hi - lo)
        assert bootstrap_ci(macro_f1, y, yhat, n=500, seed=1) == (point, lo, hi)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(N): 20x the clips, about 4.5x narrower


def test_bootstrap_vectorised_paths_equal_the_generic_loop():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 150)
    yhat = noisy(y, 4, 0.5, seed=2)
    yhat[:3] = 4  # a prediction outside the 4 scored classes still counts as an error
    f1_4 = functools.partial(macro_f1, num_classes=4)
    fast = bootstrap_ci(f1_4, y, yhat, n=300, seed=3)
    slow = bootstrap_ci(lambda a, b: macro_f1(a, b, num_classes=4), y, yhat, n=300, seed=3)
    assert fast == pytest.approx(slow, abs=1e-12)
    fast = bootstrap_ci(accuracy, y, yhat, n=300, seed=3)
    slow = bootstrap_ci(lambda a, b: accuracy(a, b), y, yhat, n=300, seed=3)
    assert fast == pytest.approx(slow, abs=1e-12)


def test_paired_bootstrap_diff():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 800)
    good, bad = noisy(y, 5, 0.8, seed=3), noisy(y, 5, 0.4, seed=4)
    assert paired_bootstrap_diff(macro_f1, y, good, good, n=200) == (0.0, 0.0, 0.0)
    point, lo, hi = paired_bootstrap_diff(macro_f1, y, good, bad, n=400)
    assert point == pytest.approx(macro_f1(y, good) - macro_f1(y, bad))
    assert 0 < lo <= point <= hi
    with pytest.raises(ValueError, match="one length"):
        bootstrap_ci(accuracy, y, good[:-1])


# --- Stuart–Maxwell ----------------------------------------------------------------------------------------
KNOWN = np.array([[30, 5, 2, 1, 0],
                  [8, 20, 3, 0, 1],
                  [1, 6, 15, 4, 2],
                  [0, 2, 1, 12, 3],
                  [2, 0, 1, 1, 9]])


def test_stuart_maxwell_equals_statsmodels_on_a_known_table():
    a, b = preds_from_table(KNOWN)
    assert np.array_equal(contingency(a, b, 5), KNOWN)
    ref = SquareTable(KNOWN, shift_zeros=False).homogeneity()
    res = stuart_maxwell(a, b, 5)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.pvalue == pytest.approx(ref.pvalue)
    assert res.df == ref.df == 4
    assert not res.singular and res.categories_used == (0, 1, 2, 3, 4)
    # By hand: d = column - row margins (last category dropped), S = diag(r + c) - (T + T^T), n d^T S^-1 d.
    t = KNOWN[:-1, :-1].astype(float)
    r, c = KNOWN.sum(1)[:-1], KNOWN.sum(0)[:-1]
    s = -(t + t.T)
    np.fill_diagonal(s, r + c - 2 * np.diag(t))
    d = c - r
    assert res.statistic == pytest.approx(d @ np.linalg.solve(s, d))
    assert res.reject == (res.pvalue < 0.01)


def test_stuart_maxwell_rejects_a_clear_shift_and_not_a_symmetric_table():
    shifted = np.diag([40, 40, 40, 40, 40]) + np.triu(np.full((5, 5), 12), 1)  # B predicts higher classes
    assert stuart_maxwell(*preds_from_table(shifted)).reject
    symmetric = KNOWN + KNOWN.T
    res = stuart_maxwell(*preds_from_table(symmetric))
    assert res.statistic == pytest.approx(0.0, abs=1e-9) and not res.reject


def test_stuart_maxwell_singular_table_is_reported():
    a = np.array([0, 1, 2, 2, 1, 0, 3])
    res = stuart_maxwell(a, a.copy(), 5)  # identical predictions: no discordant pairs
    assert res.singular and math.isnan(res.statistic) and math.isnan(res.pvalue)
    assert not res.reject
    assert res.categories_used == (0, 1, 2, 3)
    d = res.to_dict()
    assert d["statistic"] is None and d["singular"] is True
    json.dumps(d, allow_nan=False)


def test_stuart_maxwell_drops_categories_empty_in_both_margins():
    table = KNOWN.copy()
    table[2, :] = 0
    table[:, 2] = 0  # class 2 predicted by neither model
    table[4, 0] = 5  # class 4 kept: empty in one margin is not dropped
    a, b = preds_from_table(table)
    res = stuart_maxwell(a, b, 5)
    assert res.categories_used == (0, 1, 3, 4)
    ref = SquareTable(table[np.ix_([0, 1, 3, 4], [0, 1, 3, 4])], shift_zeros=False).homogeneity()
    assert res.df == ref.df == 3
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.pvalue == pytest.approx(ref.pvalue)
    one = stuart_maxwell(np.zeros(4, int), np.zeros(4, int), 5)  # one category left: margins trivially equal
    assert one.categories_used == (0,) and one.df == 0 and not one.reject


# --- records -----------------------------------------------------------------------------------------------
def test_build_evaluation_and_json_round_trip():
    ev = make_evaluation()
    assert ev.n_test == 300 and ev.emo_f1 is not None and ev.spk_acc is not None
    for est in (ev.emo_f1, ev.spk_acc, ev.probe_emo_from_spk_f1, ev.probe_spk_from_emo_acc, ev.leakage):
        assert est.lo <= est.value <= est.hi
    # the headline is the targeted direction (spk2emo by default) above its identity-only floor
    assert ev.leakage_targets == ["emo_from_spk"] and ev.leakage.value == ev.leakage_emo_from_spk
    detail = ev.leakage_detail["directions"]["emo_from_spk"]
    assert ev.leakage.value == pytest.approx(max(0.0, (detail["probe"] - detail["floor"]) / (1 - detail["floor"])))
    assert ev.probe_emo_from_spk_f1.value == detail["probe"] and ev.chance_emo_f1 == detail["chance"]
    assert np.asarray(ev.emo_confusion).sum() == 300
    text = ev.to_json()
    assert Evaluation.from_json(text) == ev
    stl = make_evaluation("stl-speaker")
    assert stl.emo_f1 is None and stl.emo_confusion is None
    assert Evaluation.from_json(stl.to_json()) == stl
    with pytest.raises(ValueError, match="unknown evaluation fields"):
        Evaluation.from_dict({**ev.to_dict(), "bogus": 1})


def test_estimate_json_has_no_nan():
    est = Estimate(math.nan, None, None)
    assert est.to_dict() == {"value": None, "lo": None, "hi": None}
    assert est.fmt() == "n/a"
    assert Estimate(0.5123, 0.48, 0.55).fmt() == "51.2 [48.0, 55.0]"


def test_compare_round_trip():
    rng = np.random.default_rng(4)
    emo, spk = rng.integers(0, 5, 400), rng.integers(0, 6, 400)
    a, b = make_evaluation("gr"), make_evaluation("mtl")
    c = compare(a, b, emo, noisy(emo, 5, 0.7, 1), noisy(emo, 5, 0.7, 2), spk, noisy(spk, 6, 0.5, 3),
                noisy(spk, 6, 0.5, 4), n_boot=200)
    assert set(c.diffs) == {"emo_f1", "spk_acc"}
    assert c.diffs["emo_f1"].lo <= c.diffs["emo_f1"].value <= c.diffs["emo_f1"].hi
    assert Comparison.from_json(c.to_json()) == c


def test_stuart_maxwell_category_without_disagreements_is_singular():
    table = KNOWN.copy()
    table[0, 1:] = 0
    table[1:, 0] = 0  # both models agree on every clip either of them puts in class 0
    res = stuart_maxwell(*preds_from_table(table))
    assert res.singular and math.isnan(res.statistic) and not res.reject
    with pytest.warns(Warning, match="invert"):
        assert math.isnan(SquareTable(table, shift_zeros=False).homogeneity().statistic)
