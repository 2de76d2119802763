"""bundle.py: a tiny model's folder written and read back (integer and string ids), its scores
equal to the model's own, unknown ids on the fallback row, no pickle; and logged, registered and
loaded by URI from a temporary store."""

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.bundle import load_bundle, save_model
from pipeline.model import MatrixFactorization
from pipeline.tracking import Tracker, TrackingError, configure_mlflow

INT_IDS = (np.array([3, 10, 42]), np.array([1, 5, 7, 9]))
STR_IDS = (np.array(["ann", "bob", "cy"], dtype=object), np.array(["i1", "i5", "i7", "i9"], dtype=object))


def _model(n_users: int, n_items: int) -> MatrixFactorization:
    model = MatrixFactorization(n_users, n_items, 3, global_mean=3.5, rating_scale=(1.0, 5.0))
    model.reset_parameters(torch.Generator().manual_seed(0), std=0.8)
    return model


def _save(path, user_ids, item_ids) -> MatrixFactorization:
    model = _model(len(user_ids), len(item_ids))
    seen = pd.DataFrame({"user_id": user_ids[[0, 0, 1, 2]], "item_id": item_ids[[0, 1, 1, 3]],
                         "rating": [4.0, 3.0, 5.0, 2.0]})
    titles = {item_ids[0]: "Toy Story (1995)", item_ids[1]: "GoldenEye (1995)"}
    save_model(path, model, user_ids=user_ids, item_ids=item_ids, seen=seen, titles=titles, dataset="tiny",
               metadata={"split_fingerprint": "f"})
    return model


def _expected(model: MatrixFactorization, user_rows, item_rows) -> np.ndarray:
    with torch.no_grad():
        return model.predict(torch.tensor(user_rows), torch.tensor(item_rows)).numpy()


@pytest.fixture(autouse=True)
def _no_pickle(monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")


@pytest.mark.parametrize("ids", [INT_IDS, STR_IDS], ids=["int", "str"])
def test_a_saved_model_loads_back_with_the_same_scores(tmp_path, ids):
    user_ids, item_ids = ids
    model = _save(tmp_path / "model", user_ids, item_ids)
    bundle = load_bundle(str(tmp_path / "model"))
    users, items = [user_ids[1], user_ids[2], user_ids[0]], [item_ids[1], item_ids[3], item_ids[2]]
    np.testing.assert_allclose(bundle.score(users, items), _expected(model, [1, 2, 0], [1, 3, 2]), atol=1e-6)
    assert bundle.dataset == "tiny" and bundle.integer_ids == (ids is INT_IDS)
    assert bundle.titles[item_ids[0]] == "Toy Story (1995)"  # integer keys come back as integers
    assert bundle.knows("user_id", user_ids[2]) and not bundle.knows("item_id", item_ids[2])  # seen: fitted pairs
    assert list(bundle.seen.columns) == ["user_id", "item_id"] and len(bundle.seen) == 4


@pytest.mark.parametrize("ids,unknown", [(INT_IDS, 999), (STR_IDS, "nobody")], ids=["int", "str"])
def test_an_unknown_id_scores_on_the_fallback_row(tmp_path, ids, unknown):
    user_ids, item_ids = ids
    model = _save(tmp_path / "model", user_ids, item_ids)
    bundle = load_bundle(str(tmp_path / "model"))
    fallback = _expected(model, [len(user_ids)], [0])
    np.testing.assert_allclose(bundle.score([unknown], [item_ids[0]]), fallback, atol=1e-6)


def test_command_line_ids_are_parsed_as_the_models_kind(tmp_path):
    _save(tmp_path / "int", *INT_IDS)
    _save(tmp_path / "str", *STR_IDS)
    integer, string = load_bundle(str(tmp_path / "int")), load_bundle(str(tmp_path / "str"))
    assert integer.parse_id("10", "--user") == 10 and string.parse_id("10", "--user") == "10"
    with pytest.raises(ValueError, match="--user 'ann': this model's ids are integers"):
        integer.parse_id("ann", "--user")


def test_an_integer_model_is_also_the_pytorch_scorer(tmp_path):
    import mlflow

    model = _save(tmp_path / "model", *INT_IDS)
    scorer = mlflow.pytorch.load_model(str(tmp_path / "model"))
    pairs = torch.tensor([[10, 5], [42, 9], [999, 1]])
    np.testing.assert_allclose(scorer(pairs).detach().numpy(), _expected(model, [1, 2, 3], [1, 3, 0]), atol=1e-6)


def test_a_logged_and_registered_model_loads_by_uri_from_the_configured_store(tmp_path, mlflow_store,
                                                                              mlflow_globals):
    model = _save(tmp_path / "model", *INT_IDS)
    tracker = Tracker.connect(mlflow_store, "unit")
    tracker.create_parent("study", {})
    key = {"optuna.study_name": "s", "optuna.best_trial": "0"}
    uri = tracker.log_model(tmp_path / "model", key)
    assert tracker.register(uri, "tiny-mf", 0.9, "f", key) == ("1", "champion")
    configure_mlflow(mlflow_store)  # what predict and recommend do first
    for address in (uri, "models:/tiny-mf@champion", "models:/tiny-mf/1"):
        bundle = load_bundle(address)
        np.testing.assert_allclose(bundle.score([10], [5]), _expected(model, [1], [1]), atol=1e-6)
    with pytest.raises(TrackingError, match=f"MLflow at {mlflow_store}: loading model 'models:/tiny-mf@nobody'"):
        load_bundle("models:/tiny-mf@nobody")


def test_something_else_is_not_a_pipeline_model(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "MLmodel").write_text("flavors: {}\n")
    with pytest.raises(TrackingError, match="not a pipeline model"):
        load_bundle(str(tmp_path / "other"))
