"""Tests for bench/search_throughput.py's rates (no search is run)."""

import datetime
import os
import sys

import optuna
import pytest

BENCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "bench"
)
sys.path.insert(0, BENCH)

import search_throughput  # pylint: disable=wrong-import-position

_T0 = datetime.datetime(2026, 1, 1)


def _trial(number, worker, start, end):
    return optuna.trial.FrozenTrial(
        number=number,
        state=optuna.trial.TrialState.COMPLETE,
        value=0.5,
        datetime_start=_T0 + datetime.timedelta(seconds=start),
        datetime_complete=_T0 + datetime.timedelta(seconds=end),
        params={},
        distributions={},
        user_attrs={"worker": worker},
        system_attrs={},
        intermediate_values={},
        trial_id=number,
    )


def test_steady_rate_sums_each_workers_pace_after_its_first_trial():
    # Worker a: a slow first trial (20 s), then 3 trials of 10 s: 3 / 30 s.
    # Worker b starts 5 s later: a 25 s first trial, then 2 of 15 s: 2 / 30 s.
    trials = [
        _trial(0, "a", 0, 20),
        _trial(1, "b", 5, 30),
        _trial(2, "a", 20, 30),
        _trial(3, "a", 30, 40),
        _trial(4, "b", 30, 45),
        _trial(5, "a", 40, 50),
        _trial(6, "b", 45, 60),
    ]
    rate = search_throughput.steady_rate(trials, "worker")
    assert rate == pytest.approx(3 * 3600 / 30 + 2 * 3600 / 30)


def test_a_worker_with_one_trial_adds_nothing_and_none_paced_is_an_error():
    trials = [_trial(0, "a", 0, 10), _trial(1, "a", 10, 20), _trial(2, "b", 0, 30)]
    assert search_throughput.steady_rate(trials, "worker") == pytest.approx(360.0)
    with pytest.raises(RuntimeError, match="no worker of 2 completed 2 trials"):
        search_throughput.steady_rate(trials[1:], "worker")
