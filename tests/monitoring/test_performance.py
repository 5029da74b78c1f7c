"""Realised performance from the labels known so far."""

import numpy as np
import pytest

from monitoring import realised_performance, wilson_interval


def test_recall_and_precision_count_only_known_frauds():
    stopped = np.array([True, True, False, False, True, False] * 5)
    known = np.array([True, False, True, False, False, False] * 5)
    perf = realised_performance(stopped, known, min_fraud=5)
    assert perf.known_fraud == 10 and perf.stopped == 15
    assert perf.recall == pytest.approx(0.5)
    assert perf.precision == pytest.approx(5 / 15)
    low, high = perf.recall_interval
    assert low < 0.5 < high


def test_too_few_known_frauds_withholds_recall():
    perf = realised_performance(np.array([True, False]), np.array([True, False]), min_fraud=10)
    assert perf.recall is None and not perf.reliable and perf.known_fraud == 1


def test_wilson_interval_is_sane_at_the_edges_and_narrows_with_more_trials():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    narrow, wide = wilson_interval(80, 100), wilson_interval(8, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert narrow[0] < 0.8 < narrow[1]
