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
    f = pd.DataFrame({"user_id": [1, 1, 2, 2, 3] * 4, "item_id": [1, 2, 1, 2, 9] * 4, "rating": 4.0, "timestamp": 0})
    f["item_id"] += np.repeat([0, 10, 20, 30], 5)  # four blocks of the same shape: item 9 (+10k) seen once
    r = canonical(f, name="c", rating_scale=(1, 5), source="c")
    kept = next(s for seed in range(200) if (s := split(r, test=0.2, valid=0.0, seed=seed)).cold["test"] == 1)
    assert len(kept.test_rows) == 4
    part = kept.part("test")
    assert ((part.users == kept.n_users) | (part.items == kept.n_items)).sum() == 1  # the fallback row
    dropped = split(r, test=0.2, valid=0.0, seed=kept.settings["seed"], cold="drop")
    assert dropped.cold["test"] == 1 and len(dropped.test_rows) == 3
    assert dropped.fingerprint != kept.fingerprint


def _tiny(n, users=None):
    f = pd.DataFrame({"user_id": np.arange(n) if users is None else users, "item_id": np.arange(n), "rating": 3.0,
                      "timestamp": np.arange(n)})
    return canonical(f, name="tiny", rating_scale=(1, 5), source="tiny")


@pytest.mark.parametrize("ratings,kwargs,message", [
    (_tiny(2), {}, "tiny: split random: the test part would be empty (2 rows): test=0.1 of 2 rows rounds to 0 "
                   "rows; needs at least 6 rows (or test=0)"),
    (_tiny(5), {"test": 0.2, "valid": 0.1},
     "the valid part would be empty (5 rows): valid=0.1 of 5 rows rounds to 0 rows; "
     "needs at least 6 rows (or valid=0)"),
    (_tiny(2), {"test": 0.49, "valid": 0.49},
     "the train part would be empty (2 rows): test + valid = 0.98 leaves it no row; needs at least 3 rows"),
    (_tiny(3), {"strategy": "temporal", "valid": 0.0}, "split temporal: the test part would be empty (3 rows)"),
    (_tiny(6, [0, 0, 0, 1, 1, 1]), {"strategy": "per_user"},
     "split per_user: the test part would be empty (6 rows): test=0.1 of each user's rows, one kept for train, "
     "rounds to 0 for every user; needs a user with at least 6 rows (the most any user has is 3)"),
    (_tiny(6, [0, 0, 1, 1, 2, 2]), {"strategy": "leave_last_k"},
     "split leave_last_k: the test part would be empty (6 rows): only users with at least 3 rows give their last "
     "k=1 to test and valid; needs a user with at least 3 rows (the most any user has is 2)"),
    (_tiny(20), {"test": 0.1, "valid": 0.0, "cold": "drop"},
     "the test part would be empty: all 2 of its rows are cold (user or item unseen in train) and cold='drop' "
     "removes them; needs more data, or cold='keep'"),
])
def test_too_little_data_to_split_is_one_clear_error(ratings, kwargs, message):
    with pytest.raises(ValueError) as error:
        split(ratings, **kwargs)
    assert message in str(error.value)


def test_the_fewest_rows_named_are_enough():
    assert len(split(_tiny(6)).test_rows) == 1
    assert len(split(_tiny(6, [0] * 6), "per_user").test_rows) == 1
    assert len(split(_tiny(3, [0, 0, 0]), "leave_last_k").valid_rows) == 1


def test_a_part_not_asked_for_may_be_empty():
    s = split(_tiny(8), test=0.2, valid=0.0)
    assert len(s.valid_rows) == 0 and len(s.test_rows) == 2


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
