import numpy as np
import pandas as pd
import pytest

from pipeline.ratings import canonical
from pipeline.split import STRATEGIES, split


def _all_rows(s):
    return np.concatenate([s.train_rows, s.valid_rows, s.test_rows])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_parts_are_disjoint_complete_and_reproducible(small_ratings, strategy):
    a = split(small_ratings, strategy, seed=5)
    rows = _all_rows(a)
    assert len(rows) == len(np.unique(rows)) == len(small_ratings)
    b = split(small_ratings, strategy, seed=5)
    for part in ("train_rows", "valid_rows", "test_rows"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert a.fingerprint == b.fingerprint
    assert len(a.valid_rows) > 0 and len(a.test_rows) > 0


@pytest.mark.parametrize("strategy", ["random", "per_user"])  # temporal: the seed only breaks ties
def test_different_seeds_differ(small_ratings, strategy):
    a, b = split(small_ratings, strategy, seed=0), split(small_ratings, strategy, seed=1)
    assert not np.array_equal(a.test_rows, b.test_rows)
    assert a.fingerprint != b.fingerprint


@pytest.mark.parametrize("test,valid", [(0.1, 0.1), (0.2, 0.0), (0.05, 0.15), (0.333, 0.111)])
def test_random_fractions_are_within_one_row(small_ratings, test, valid):
    s = split(small_ratings, test=test, valid=valid)
    n = len(small_ratings)
    assert abs(len(s.test_rows) - test * n) <= 1
    assert abs(len(s.valid_rows) - valid * n) <= 1


def test_id_maps_come_from_train_only(small_ratings):
    s = split(small_ratings, seed=2)
    train = small_ratings.frame.iloc[s.train_rows]
    np.testing.assert_array_equal(s.user_ids, np.unique(train["user_id"]))
    np.testing.assert_array_equal(s.item_ids, np.unique(train["item_id"]))
    part = s.part("train")
    assert part.users.max() < s.n_users and part.items.max() < s.n_items


def test_per_user_keeps_a_train_row_for_every_user(small_ratings):
    s = split(small_ratings, "per_user", test=0.3, valid=0.3)
    users = small_ratings.frame["user_id"]
    assert set(users.iloc[s.train_rows]) == set(users)
    held = small_ratings.frame.iloc[s.test_rows].groupby("user_id").size()
    sizes = small_ratings.frame.groupby("user_id").size()
    assert (abs(held - 0.3 * sizes.loc[held.index]) <= 1).all()


def test_temporal_is_one_global_cut():
    f = pd.DataFrame({"user_id": np.arange(100) % 7, "item_id": np.arange(100), "rating": 3.0,
                      "timestamp": np.random.default_rng(0).permutation(100)})
    r = canonical(f, name="t", rating_scale=(1, 5), source="t")
    s = split(r, "temporal", test=0.2, valid=0.1)
    ts = r.frame["timestamp"].to_numpy()
    assert ts[s.train_rows].max() < ts[s.valid_rows].min() <= ts[s.valid_rows].max() < ts[s.test_rows].min()


def test_leave_last_k_takes_each_users_latest(small_ratings):
    s = split(small_ratings, "leave_last_k", k=2)
    f = small_ratings.frame
    test = f.iloc[s.test_rows]
    assert (test.groupby("user_id").size() == 2).all()
    latest_train_or_valid = f.iloc[np.concatenate([s.train_rows, s.valid_rows])].groupby("user_id")["timestamp"].max()
    earliest_test = test.groupby("user_id")["timestamp"].min()
    assert (earliest_test >= latest_train_or_valid.loc[earliest_test.index]).all()


def test_cold_rows_are_counted_kept_or_dropped():
    f = pd.DataFrame({"user_id": [1, 1, 2, 2, 3], "item_id": [1, 2, 1, 2, 9], "rating": 4.0, "timestamp": 0})
    r = canonical(f, name="c", rating_scale=(1, 5), source="c")
    kept = next(s for seed in range(50) if (s := split(r, test=0.2, valid=0.0, seed=seed)).cold["test"])
    assert kept.cold["test"] == 1 and len(kept.test_rows) == 1
    part = kept.part("test")
    assert part.users[0] == kept.n_users or part.items[0] == kept.n_items  # the fallback row
    dropped = split(r, test=0.2, valid=0.0, seed=kept.settings["seed"], cold="drop")
    assert dropped.cold["test"] == 1 and len(dropped.test_rows) == 0
    assert dropped.fingerprint != kept.fingerprint


@pytest.mark.parametrize("kwargs,message", [
    ({"strategy": "kfold"}, "strategy 'kfold'"),
    ({"test": 1.2}, "test=1.2"),
    ({"test": 0.5, "valid": 0.5}, "test \\+ valid"),
    ({"cold": "ignore"}, "cold='ignore'"),
    ({"strategy": "leave_last_k", "k": 0}, "k=0"),
])
def test_bad_settings_are_refused(small_ratings, kwargs, message):
    with pytest.raises(ValueError, match=message):
        split(small_ratings, **kwargs)
