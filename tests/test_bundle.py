"""bundle.py: a tiny model's folder written and read back (integer, string and mixed ids, each
column its own kind), its scores equal to the model's own, unknown ids on the fallback row, no
pickle; logged, registered and loaded by URI from a temporary store; and the predict and recommend
commands over it."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.bundle import load_bundle, save_model
from pipeline.model import ITEM_BIAS, USER_BIAS, MatrixFactorization
from pipeline.tracking import Tracker, TrackingError, configure_mlflow

INT_IDS = (np.array([3, 10, 42]), np.array([1, 5, 7, 9]))
STR_IDS = (np.array(["ann", "bob", "cy"], dtype=object), np.array(["i1", "i5", "i7", "i9"], dtype=object))
IDS = {"int": INT_IDS, "str": STR_IDS, "int-str": (INT_IDS[0], STR_IDS[1]), "str-int": (STR_IDS[0], INT_IDS[1])}


def _model(n_users: int, n_items: int) -> MatrixFactorization:
    model = MatrixFactorization(n_users, n_items, 3, global_mean=3.5, rating_scale=(1.0, 5.0))
    generator = torch.Generator().manual_seed(0)
    model.reset_parameters(generator, std=0.8)
    with torch.no_grad():  # biases too, so a fallback row scores unlike a known one
        model.users[:-1, USER_BIAS] = torch.randn(n_users, generator=generator) * 0.5
        model.items[:-1, ITEM_BIAS] = torch.randn(n_items, generator=generator) * 0.5
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


@pytest.mark.parametrize("kinds", IDS)
def test_a_saved_model_loads_back_with_the_same_scores(tmp_path, kinds):
    user_ids, item_ids = IDS[kinds]
    model = _save(tmp_path / "model", user_ids, item_ids)
    bundle = load_bundle(str(tmp_path / "model"))
    users, items = [user_ids[1], user_ids[2], user_ids[0]], [item_ids[1], item_ids[3], item_ids[2]]
    np.testing.assert_allclose(bundle.score(users, items), _expected(model, [1, 2, 0], [1, 3, 2]), atol=1e-6)
    kind = {"int": "integer", "str": "string"}
    expected = [kind[k] for k in kinds.split("-")] * (2 if "-" not in kinds else 1)
    assert bundle.dataset == "tiny" and [bundle.kind("user_id"), bundle.kind("item_id")] == expected
    assert bundle.titles[item_ids[0]] == "Toy Story (1995)"  # keys come back as the item column's kind
    assert bundle.knows("user_id", user_ids[2]) and not bundle.knows("item_id", item_ids[2])  # seen: fitted pairs
    assert list(bundle.seen.columns) == ["user_id", "item_id"] and len(bundle.seen) == 4
    assert bundle.features == {} and not (tmp_path / "model" / "artifacts" / "features").exists()  # no side tables


@pytest.mark.parametrize("kinds,unknown", [("int", (999, 999)), ("str", ("nobody", "nothing")),
                                           ("int-str", (999, "nothing")), ("str-int", ("nobody", 999))],
                         ids=list(IDS))
def test_an_unknown_id_scores_on_the_fallback_row(tmp_path, kinds, unknown):
    user_ids, item_ids = IDS[kinds]
    model = _save(tmp_path / "model", user_ids, item_ids)
    bundle = load_bundle(str(tmp_path / "model"))
    scores = bundle.score([unknown[0], user_ids[1], unknown[0]], [item_ids[0], unknown[1], unknown[1]])
    expected = _expected(model, [len(user_ids), 1, len(user_ids)], [0, len(item_ids), len(item_ids)])
    np.testing.assert_allclose(scores, expected, atol=1e-6)


def test_command_line_ids_are_parsed_as_each_columns_kind(tmp_path):
    _save(tmp_path / "int", *INT_IDS)
    _save(tmp_path / "mixed", *IDS["str-int"])
    integer, mixed = load_bundle(str(tmp_path / "int")), load_bundle(str(tmp_path / "mixed"))
    assert integer.parse_id("user_id", "10", "--user") == 10 and integer.parse_id("item_id", "-3", "--item") == -3
    assert mixed.parse_id("user_id", "10", "--user") == "10" and mixed.parse_id("item_id", "10", "--item") == 10
    with pytest.raises(ValueError, match="--user 'ann': this model's user ids are integers"):
        integer.parse_id("user_id", "ann", "--user")
    with pytest.raises(ValueError, match="--item 'i5': this model's item ids are integers"):
        mixed.parse_id("item_id", "i5", "--item")
    for text in ("1e30", "Infinity", "true", "20.5"):
        with pytest.raises(ValueError, match=f"--user '{text}': this model's user ids are integers"):
            integer.parse_id("user_id", text, "--user")
    for text in (str(2**63), str(2**64 - 20), "1" * 30):
        with pytest.raises(ValueError, match=rf"--item {text}: cannot be one of this model's item ids: expected"):
            integer.parse_id("item_id", text, "--item")


def test_an_integer_model_is_also_the_pytorch_scorer(tmp_path):
    import mlflow

    model = _save(tmp_path / "model", *INT_IDS)
    scorer = mlflow.pytorch.load_model(str(tmp_path / "model"))
    pairs = torch.tensor([[10, 5], [42, 9], [999, 1]])
    scores = scorer(pairs)
    assert not scores.requires_grad  # a scorer: no autograd graph is built
    np.testing.assert_allclose(scores.numpy(), _expected(model, [1, 2, 3], [1, 3, 0]), atol=1e-6)


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


def _run(command, folder, store, *args) -> int:
    return command.main(["--model", str(folder), "--tracking-uri", store, *args])


@pytest.mark.parametrize("kinds", IDS)
def test_recommend_ranks_a_users_unseen_items_whatever_the_id_kinds(tmp_path, kinds, capsys, mlflow_store,
                                                                    mlflow_globals):
    from pipeline import recommend

    user_ids, item_ids = IDS[kinds]
    model = _save(tmp_path / "model", user_ids, item_ids)
    scores = _expected(model, [1, 1], [0, 3])  # user 1 rated item 1; items 0 and 3 are the others seen
    order = [0, 3] if scores[0] >= scores[1] else [3, 0]
    ranked = recommend.top_unseen(load_bundle(str(tmp_path / "model")), user_ids[1], 5)
    assert [item for item, _ in ranked] == [item_ids[j] for j in order]
    np.testing.assert_allclose([r for _, r in ranked], sorted(scores, reverse=True), atol=1e-6)
    assert _run(recommend, tmp_path / "model", mlflow_store, "--user", str(user_ids[1]), "--json") == 0
    items = json.loads(capsys.readouterr().out)["items"]
    assert [i["item_id"] for i in items] == [item_ids[j] for j in order]
    assert items[[i["item_id"] for i in items].index(item_ids[0])]["title"] == "Toy Story (1995)"


@pytest.mark.parametrize("kinds", ["int-str", "str-int"])
def test_predict_takes_each_column_as_its_own_kind(tmp_path, kinds, capsys, mlflow_store, mlflow_globals):
    from pipeline import predict

    user_ids, item_ids = IDS[kinds]
    model = _save(tmp_path / "model", user_ids, item_ids)
    assert _run(predict, tmp_path / "model", mlflow_store, "--user", str(user_ids[2]), "--item", str(item_ids[3]),
                "--json") == 0
    assert json.loads(capsys.readouterr().out)["rating"] == pytest.approx(float(_expected(model, [2], [3])[0]),
                                                                          abs=1e-6)
    integer = "--user" if kinds == "int-str" else "--item"
    for text in ("1e30", str(2**64 - 20), "true"):
        ids = {"--user": str(user_ids[2]), "--item": str(item_ids[3]), integer: text}
        assert _run(predict, tmp_path / "model", mlflow_store, *[x for kv in ids.items() for x in kv]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {integer} ") and text in error and error.count("\n") == 1


def test_a_model_without_items_json_is_one_clear_error(tmp_path, capsys, mlflow_store, mlflow_globals):
    from pipeline import recommend

    _save(tmp_path / "model", *STR_IDS)
    (tmp_path / "model" / "artifacts" / "items.json").unlink()
    with pytest.raises(TrackingError, match=r"model: artifacts/items\.json is missing \(the dataset's name and item "
                                            r"titles\): put it back, or register a model"):
        load_bundle(str(tmp_path / "model"))
    capsys.readouterr()
    assert _run(recommend, tmp_path / "model", mlflow_store, "--user", "ann") == 2
    error = capsys.readouterr().err
    assert "artifacts/items.json is missing" in error and error.count("\n") == 1
    (tmp_path / "model" / "artifacts" / "items.json").write_text('{"titles": {}}')
    with pytest.raises(TrackingError, match=r"artifacts/items\.json is unreadable \(KeyError: 'dataset'\)"):
        load_bundle(str(tmp_path / "model"))
