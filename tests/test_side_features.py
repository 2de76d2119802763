"""Side-feature blocks in training (TrainConfig.features): each feature group a learned block folded
into its side's rows, U = P + A·Y + Σ_g S_g·W_g, so the exported scorer is unchanged."""

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.features import SideFeatures
from pipeline.ratings import canonical
from pipeline.space import SEARCH_SPACES
from pipeline.split import split
from pipeline.training import TrainConfig, fit, fit_stack


@pytest.fixture(scope="module")
def grouped():
    """Users of group "a" rate every item 5, of group "b" 1 (plus noise); each user has few train
    rows, so who is in which group is what the feature says, not what a user's own row can learn."""
    rng = np.random.default_rng(0)
    users, items = np.repeat(np.arange(400), 6), rng.integers(0, 60, 2400)
    group = np.where(np.arange(400) % 2 == 0, "a", "b")
    ratings = np.clip(np.where(group[users] == "a", 4.5, 1.5) + rng.normal(0, 0.3, len(users)), 1, 5)
    frame = pd.DataFrame({"user_id": users, "item_id": items, "rating": ratings.astype("float32"),
                          "timestamp": np.zeros(len(users), dtype="int64")}).drop_duplicates(["user_id", "item_id"])
    data = canonical(frame, name="grouped", rating_scale=(1.0, 5.0), source="test")
    features = SideFeatures.build(np.arange(400), {"group": list(group)})
    return split(data.replace(user_features=features), seed=0, test=0.1, valid=0.3)


def _sgd(**changes) -> TrainConfig:
    base = dict(optimizer="sparse_sgd", weight_decay=0.0, lr=0.02, l2=0.02, factors=4, epochs=8, batch_size=64,
                init_std=0.1)
    return TrainConfig(**{**base, **changes})


@pytest.mark.parametrize("optimizer", ["sparse_sgd", "adam", "bayes"])
def test_a_user_feature_carries_what_each_user_has_too_few_rows_to_learn(grouped, optimizer):
    config = {"sparse_sgd": _sgd(), "adam": TrainConfig(factors=4, epochs=8, lr=0.02, batch_size=64),
              "bayes": TrainConfig(family="bayes", factors=4, epochs=20, burn_in=5, init_std=0.1)}[optimizer]
    fitted = {mode: fit(grouped.part("train"), config.replace(features=mode), valid=grouped.part("valid"),
                        features=grouped.features, **grouped.dims) for mode in ("none", "user")}
    assert fitted["user"].best_valid_rmse < 0.8 * fitted["none"].best_valid_rmse


def test_stacked_feature_models_are_each_model_trained_alone(grouped):
    configs = [_sgd(features="user"), _sgd(features="user", lr=0.01, factors=3)]
    options = dict(valid=grouped.part("valid"), features=grouped.features, **grouped.dims)
    stacked = fit_stack(grouped.part("train"), configs, [0, 1], **options)
    for config, seed, together in zip(configs, [0, 1], stacked):
        alone = fit(grouped.part("train"), config, seed=seed, **options)
        assert together.best_valid_rmse == pytest.approx(alone.best_valid_rmse, rel=1e-5)


def test_features_asked_of_data_without_them_is_one_clear_error(grouped):
    with pytest.raises(ValueError, match="features='item': the data has no item features"):
        fit(grouped.part("train"), _sgd(features="item"), features=grouped.features, **grouped.dims)
    with pytest.raises(ValueError, match="features='user': the data has no user features"):
        fit(grouped.part("train"), _sgd(features="user"), **grouped.dims)
    with pytest.raises(ValueError, match="features='sideways'"):
        _sgd(features="sideways")


def test_a_study_made_without_the_features_refuses_them(grouped):
    import optuna

    from pipeline.search.options import SearchError
    from pipeline.search.study import open_study
    from pipeline.space import load_space

    storage, space = optuna.storages.InMemoryStorage(), load_space("quick")
    plain = split(grouped.ratings.replace(user_features=None), seed=0, test=0.1, valid=0.3)
    assert plain.fingerprint == grouped.fingerprint and plain.features_digest == "none"
    open_study(storage, "s", space, plain, seed=0)
    with pytest.raises(SearchError, match="'s' was created for another set of side features"):
        open_study(storage, "s", space, grouped, seed=0)
    open_study(storage, "s", space, plain, seed=0)  # the same data resumes it


def test_a_space_that_can_choose_features_the_data_lacks_is_refused_before_any_work(tmp_path, capsys):
    from conftest import Workspace

    from pipeline import search

    ws = Workspace(tmp_path)
    raw = yaml.safe_load((SEARCH_SPACES / "quick.yaml").read_text())
    raw["params"]["features"] = {"type": "categorical", "choices": ["none", "user"]}
    space = tmp_path / "featured.yaml"
    space.write_text(yaml.safe_dump(raw))
    assert search.main(ws.argv(config=space)) == 2
    assert "params.features: the space can choose 'user', but" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.journal").exists()
