"""TrainConfig.memory_bytes: the structure of its count (bench/memory.py measures; tests do not)."""

import pytest

from pipeline.training import OPTIMIZERS, TrainConfig

SIZES = dict(n_users=1000, n_items=2000, rows=100_000, valid_rows=10_000)


@pytest.mark.parametrize("family", ["mf", "bayes"])
def test_it_grows_with_every_size(family):
    config = TrainConfig(family=family, factors=40, epochs=5, burn_in=1)
    base = config.memory_bytes(**SIZES)
    for key in SIZES:
        assert config.memory_bytes(**{**SIZES, key: SIZES[key] * 2}) > base, key
    assert config.replace(factors=80).memory_bytes(**SIZES) > base
    assert config.replace(implicit="user").memory_bytes(**SIZES) > base
    assert config.replace(implicit="both").memory_bytes(**SIZES) > config.replace(implicit="user").memory_bytes(**SIZES)


def test_without_rows_the_terms_that_grow_with_them_are_left_out():
    config = TrainConfig(factors=40)
    assert 0 < config.memory_bytes(1000, 2000) < config.memory_bytes(1000, 2000, 100_000, 10_000)


def test_mf_counts_each_optimizers_state():
    need = {o: TrainConfig(optimizer=o, weight_decay=0.0).memory_bytes(**SIZES) for o in OPTIMIZERS}
    assert need["sparse_sgd"] < need["sgd"] == need["rmsprop"] == need["adagrad"] < need["adam"] == need["adamw"]


def test_mf_valid_scoring_is_chunked():
    from pipeline.evaluate import _CHUNK

    config = TrainConfig(factors=100)
    assert config.memory_bytes(1000, 2000, 1000, _CHUNK) == config.memory_bytes(1000, 2000, 1000, 4 * _CHUNK)
