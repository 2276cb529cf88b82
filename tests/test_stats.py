"""effdl.stats: standard errors, their verdicts and McNemar's test, against direct formulas and scipy."""

import math

import pytest
import torch
from scipy.stats import binomtest

from effdl import stats


def test_spread_is_mean_sample_std_and_standard_error():
    s = stats.spread([1.0, 2.0, 3.0, 4.0])
    assert s.mean == 2.5 and s.std == pytest.approx(math.sqrt(5 / 3)) and s.se == pytest.approx(s.std / 2)
    with pytest.raises(ValueError, match="values"):
        stats.spread([1.0])


def test_difference_of_means_is_measurable_only_beyond_two_standard_errors():
    clear = stats.difference_of_means([92.0, 92.1, 91.9], [90.0, 90.1, 89.9])
    assert clear.value == pytest.approx(2.0) and clear.measurable and clear.verdict("better", "worse") == "better"
    noise = stats.difference_of_means([92.0, 91.0, 93.0], [91.9, 92.9, 90.9])
    assert not noise.measurable and noise.verdict() == stats.NO_DIFFERENCE


def test_few_samples_need_students_t_instead_of_two_standard_errors():
    three_se = stats.Difference(3.0, 1.0)  # many samples: three standard errors is measurable
    assert three_se.measurable and three_se.threshold == 2.0
    two_windows = stats.Difference(3.0, 1.0, dof=1)  # the same from two samples is not (t = 12.7)
    assert not two_windows.measurable and two_windows.threshold == pytest.approx(12.706, abs=1e-3)
    assert stats.Difference(3.0, 1.0, dof=1000).threshold == 2.0
    assert stats.difference_of_means([1.0, 1.1, 0.9], [0.0, 0.1, -0.1]).dof == 2


def test_accuracy_se_is_the_binomial_one():
    assert stats.accuracy_se(0.92, 10_000) == pytest.approx(0.00271, abs=1e-5)
    with pytest.raises(ValueError, match="accuracy"):
        stats.accuracy_se(92.0, 10_000)


def test_mcnemar_counts_discordant_pairs_and_matches_scipy():
    a = torch.tensor([True] * 30 + [False] * 10 + [True] * 60)
    b = torch.tensor([False] * 30 + [True] * 10 + [True] * 60)
    paired = stats.mcnemar(a, b)
    assert (paired.only_a, paired.only_b, paired.n) == (30, 10, 100)
    assert paired.difference == pytest.approx(0.2)
    assert paired.p_value == pytest.approx(binomtest(30, 40, 0.5).pvalue) and paired.verdict() == "higher"
    same = stats.mcnemar(a, a)
    assert same.p_value == 1.0 and same.verdict() == stats.NO_DIFFERENCE
    with pytest.raises(ValueError, match="bool"):
        stats.mcnemar(a.float(), b)
