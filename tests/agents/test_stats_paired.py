"""agents/stats.py paired comparison: exact McNemar against scipy's binomial test, the interval, pairing."""

import math

import pytest

from espl.agents.stats import mcnemar_exact, paired


@pytest.mark.parametrize("b,c", [(0, 0), (0, 5), (5, 0), (3, 9), (10, 10), (1, 30), (47, 61), (120, 95)])
def test_mcnemar_exact_is_the_two_sided_binomial_test(b, c):
    scipy_stats = pytest.importorskip("scipy.stats")
    expected = 1.0 if b + c == 0 else scipy_stats.binomtest(min(b, c), b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="counts"):
        mcnemar_exact(-1, 2)


def test_paired_counts_and_interval():
    before = {f"item{i}": 1.0 if i < 50 else 0.0 for i in range(200)}  # 50 / 200
    after = {f"item{i}": 1.0 if 10 <= i < 80 else 0.0 for i in range(200)}  # 70 / 200: 10 lost, 30 gained
    after["extra"] = 1.0  # not in `before`: not compared
    r = paired(before, after)
    assert (r.n, r.both, r.only_a, r.only_b, r.neither) == (200, 40, 10, 30, 120)
    assert (r.rate_a, r.rate_b, r.diff) == (0.25, 0.35, pytest.approx(0.10))
    lo, hi = r.ci95
    half = 1.959963984540054 * math.sqrt(40 - 20**2 / 200) / 200
    assert (lo, hi) == (pytest.approx(0.10 - half), pytest.approx(0.10 + half))
    assert r.p_value == pytest.approx(mcnemar_exact(10, 30))
    assert r.p_value < 0.01
    assert r.to_dict()["mcnemar_p"] == r.p_value


def test_paired_with_nothing_in_common():
    r = paired({"a": 1.0}, {"b": 1.0})
    assert r.n == 0 and math.isnan(r.diff) and r.p_value == 1.0
