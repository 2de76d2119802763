"""New users and items scored from their side features (issue 19 item 4): the trained model's
feature tables (`side_tables`, taken at the best epoch, narrowed per model of a stack), the logged
model's encoders and feature scorer, the pyfunc's `user.<group>` / `item.<group>` columns in
process and over HTTP (JSON and CSV), the commands' --user-features / --item-features. An unseen id
with feature values scores as the model's tables say; a known id keeps its learned row; bad values,
unknown groups and feature columns of a model without them are refused with one clear error."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from test_serving_ids import _Server

from pipeline.bundle import load_bundle, save_model
from pipeline.features import Rule, SideFeatures
from pipeline.model import ITEM_ONE, USER_ONE
from pipeline.ratings import canonical
from pipeline.split import split
from pipeline.training import TrainConfig, fit, fit_stack

USERS, ITEMS, NEW = 90, 40, 5  # the last NEW users and items have features but no ratings
ZIPS = ["02138", "10001", "94110", "T8H1N", "60614", "30301"]
GENRES = ["Action", "Comedy", "Drama", "Film-Noir"]


def _side_features(rng, kinds: str):
    """Users: age (numeric, deciles), gender, zip (first character); items: genre (multi), year
    (numeric, fixed edges), as raw text per id. Returns (user ids, users' text, items' text)."""
    n, m = USERS + NEW, ITEMS + NEW
    users = {"age": [str(a) for a in rng.integers(15, 70, n)], "gender": list(rng.choice(["F", "M"], n)),
             "zip": list(rng.choice(ZIPS, n))}
    items = {"genre": ["|".join(rng.choice(GENRES, rng.integers(1, 3), replace=False)) for _ in range(m)],
             "year": [str(y) for y in rng.integers(1950, 2010, m)]}
    ids = np.array([f"u{u}" for u in range(n)], dtype=object) if kinds == "str" else np.arange(n)
    return ids, users, items


def _data(kinds: str, stars: bool = False):
    """Ratings driven by the features (gender, age, genre), each user ~14 of them (`stars`: rounded
    to 1-5); side features of every kind, the NEW last users and items without ratings."""
    rng = np.random.default_rng(7)
    user_ids, users, items = _side_features(rng, kinds)
    u, i = np.repeat(np.arange(USERS), 14), rng.integers(0, ITEMS, USERS * 14)
    taste = np.array([0.8 if g == "F" else -0.6 for g in users["gender"]]) + (np.array(users["age"], int) > 40) * 0.5
    action = np.array(["Action" in g for g in items["genre"]])
    rating = np.clip(3.4 + taste[u] * np.where(action[i], -1, 1) + rng.normal(0, 0.3, len(u)), 1, 5)
    rating = rating.round() if stars else rating
    frame = pd.DataFrame({"user_id": user_ids[u], "item_id": i, "rating": rating.astype("float32"),
                          "timestamp": np.zeros(len(u), dtype="int64")}).drop_duplicates(["user_id", "item_id"])
    ratings = canonical(frame, name="tiny", rating_scale=(1.0, 5.0), source="test").replace(
        user_features=SideFeatures.build(user_ids, users, {"zip": Rule(prefix=1)}),
        item_features=SideFeatures.build(np.arange(ITEMS + NEW), items, {"year": Rule(edges=(1970, 1990))}))
    return split(ratings, seed=0), users, items


def _fit_and_save(folder, data, mode: str, family: str = "mf"):
    """family: mf, bayes or ordinal (bayes with ordinal output)."""
    config = TrainConfig(factors=4, epochs=6, lr=0.02, batch_size=64, features=mode) if family == "mf" else \
        TrainConfig(family="bayes", factors=4, epochs=8, burn_in=3, init_std=0.1, features=mode,
                    **(dict(output="ordinal", noise_precision=1.0) if family == "ordinal" else {}))
    model = fit(data.part("train+valid"), config, features=data.features, **data.dims).model
    seen = data.ratings.frame.iloc[np.concatenate([data.train_rows, data.valid_rows])]
    save_model(folder, model, user_ids=data.user_ids, item_ids=data.item_ids, seen=seen, titles={1: "One"},
               dataset="tiny", metadata={}, features={"user": data.ratings.user_features,
                                                      "item": data.ratings.item_features})
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: (model, split, users' text, items' text, folder, server)}: features both (integer
    and string user ids; the bayes family, its ordinal output on ratings in stars), user only,
    none; a server for each but the string and bayes ones."""
    root = tmp_path_factory.mktemp("new-users")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        patch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")
        built = {}
        for name, kinds, mode in (("both", "int", "both"), ("both-str", "str", "both"), ("user", "int", "user"),
                                  ("none", "int", "none"), ("bayes", "int", "both"), ("ordinal", "int", "both")):
            data, users, items = _data(kinds, stars=name == "ordinal")
            family = name if name in ("bayes", "ordinal") else "mf"
            built[name] = (_fit_and_save(root / name, data, mode, family), data, users, items, root / name)
        servers = {name: _Server(b[-1]) for name, b in built.items() if name not in ("both-str", "bayes", "ordinal")}
        yield {name: (*b, servers.get(name)) for name, b in built.items()}
        for server in servers.values():
            server.close()


def _requests(data, users: dict, items: dict) -> pd.DataFrame:
    """Known and new users crossed with known and new items, each row with its feature values."""
    known_user, known_item = data.user_ids[3], int(data.item_ids[2])
    new_users = [f"u{USERS + k}" if isinstance(known_user, str) else USERS + k for k in range(NEW)]
    rows = [(u, i) for u in [known_user, *new_users] for i in (known_item, ITEMS, ITEMS + 3)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id"])
    for name, values in users.items():  # each user's own values (a known user's too, as a client may send)
        frame[f"user.{name}"] = [values[_index(u)] for u in frame.user_id]
    if "zip" in users:  # one zip CSV cannot read as a number, so the column stays text (02138 too)
        frame.loc[frame.user_id == new_users[0], "user.zip"] = "T8H1N"
    for name, values in items.items():
        frame[f"item.{name}"] = [values[i] for i in frame.item_id]
    return frame


def _index(user_id) -> int:
    """A user's place in the text lists of `_side_features` (its integer, or the number after "u")."""
    return int(str(user_id).removeprefix("u"))


def _in_process(model, data, frame: pd.DataFrame) -> np.ndarray:
    """The trained model's own scores: a known id's table row, a new one's `feature_rows` from its
    values as `SideFeatures.encode_row` encodes them (no features: the fallback row)."""
    rows = []
    for side, column, known in (("user", "user_id", data.user_ids), ("item", "item_id", data.item_ids)):
        table, encoder = (model.users, model.items)[side == "item"], getattr(data.ratings, f"{side}_features")
        names = [c for c in frame.columns if c.startswith(f"{side}.")]
        found = pd.Index(known).get_indexer(frame[column])
        values = [{c.partition(".")[2]: row[c] for c in names} for _, row in frame.iterrows()]
        new = model.feature_rows(side, [encoder.encode_row(v) if side in model.side_tables else [] for v in values])
        rows.append(torch.where(torch.from_numpy(found >= 0)[:, None], table.detach()[found], new))
    with torch.no_grad():
        return model.score_rows(*rows).numpy()


@pytest.mark.parametrize("name", ["both", "both-str", "bayes", "ordinal"])
def test_new_ids_score_from_their_features_as_the_model_tables_say(models, name):
    model, data, users, items, folder, _ = models[name]
    frame = _requests(data, users, items)
    expected = _in_process(model, data, frame)
    plain = _in_process(model, data, frame[["user_id", "item_id"]])  # the fallback rows, as before
    assert not np.allclose(expected[3:], plain[3:], atol=1e-3)  # the features move new ids' scores
    np.testing.assert_allclose(expected[:1], plain[:1], atol=1e-6)  # a known pair: its learned rows
    bundle = load_bundle(str(folder))
    np.testing.assert_allclose(np.asarray(bundle.model.predict(frame)), expected, atol=1e-5)
    np.testing.assert_allclose(bundle.score(frame.user_id, frame.item_id), plain, atol=1e-5)
    assert sorted(bundle.features) == ["item", "user"] and bundle.features["user"][2]["prefix"] == 1
    from mlflow.models import Model

    documented = Model.load(folder / "MLmodel").metadata["feature_columns"]  # the columns, where users look
    assert sorted(documented) == ["item.genre", "item.year", "use", "user.age", "user.gender", "user.zip"]
    assert documented["user.zip"].startswith("optional, categorical: text whose first 1 character(s) are one of 0")


def test_a_new_users_row_is_the_fallback_plus_the_trainers_feature_fold(models):
    """For a user in training, fallback + Σ_g S_g[u]·W_g (the trainer's CSR rows, weights 1/sqrt(n))
    is what `feature_rows` builds from the user's values: new users get the trainer's arithmetic."""
    model, data, users, *_ = models["both"]
    encoder = data.ratings.user_features
    for row in (0, 5, 17):
        by_blocks = model.users[-1].detach().clone()
        for block, table in zip(data.features["user"], model.side_tables["user"]):
            lo, hi = block.crow[row], block.crow[row + 1]
            by_blocks += (torch.from_numpy(block.values[lo:hi])[:, None] * table[block.col[lo:hi]]).sum(0)
        values = {name: users[name][_index(data.user_ids[row])] for name in users}
        torch.testing.assert_close(model.feature_rows("user", [encoder.encode_row(values)])[0], by_blocks)
    assert [t.shape for t in model.side_tables["user"]] == [(len(g.vocabulary), 6) for g in encoder.groups]
    assert all((t[:, USER_ONE] == 0).all() for t in model.side_tables["user"])
    assert all((t[:, ITEM_ONE] == 0).all() for t in model.side_tables["item"])


@pytest.mark.parametrize("name", ["both", "bayes", "ordinal"])
def test_a_new_id_is_the_average_known_one_plus_how_its_values_differ(models, name):
    """Each side's fallback row is the mean of its known rows, and its feature tables are centred:
    the rows `feature_rows` builds from every known entity's own values average to the fallback
    row, so a new id's values move it away from the average, and no values leave it there."""
    model, data, users, items, *_ = models[name]
    for side, table, ids, texts in (("user", model.users, data.user_ids, users),
                                    ("item", model.items, data.item_ids, items)):
        encoder = getattr(data.ratings, f"{side}_features")
        torch.testing.assert_close(table[-1].detach(), table[:-1].detach().mean(0), atol=1e-5, rtol=0)
        values = [encoder.encode_row({g: texts[g][_index(x)] for g in texts}) for x in ids]
        rows = model.feature_rows(side, values)
        torch.testing.assert_close(rows.mean(0), table[-1].detach(), atol=1e-5, rtol=0)
        assert (rows - table[-1]).abs().amax() > 0.01  # the values do move each entity's row


@pytest.mark.parametrize("name", ["both", "user"])
def test_over_http_new_ids_score_from_features_and_known_ids_ignore_them(models, name):
    model, data, users, items, _, server = models[name]
    frame = _requests(data, users, items if name == "both" else {})
    expected = _in_process(model, data, frame)
    body = json.loads(frame.to_json(orient="split", index=False))
    status, answer = server.post(json.dumps({"dataframe_split": body}), "application/json")
    assert status == 200, answer
    np.testing.assert_allclose(np.ravel(answer["predictions"]), expected, atol=1e-5)
    status, answer = server.post(frame.to_csv(index=False), "text/csv")  # zips such as T8H1N keep it text
    assert status == 200, answer
    np.testing.assert_allclose(np.ravel(answer["predictions"]), expected, atol=1e-5)
    other = frame.assign(**{"user.gender": "M", "user.age": 99})  # another person's values
    status, answer = server.post(other.to_csv(index=False), "text/csv")
    assert status == 200 and answer["predictions"][:3] == pytest.approx(expected[:3], abs=1e-5)  # a known user
    assert not np.allclose(answer["predictions"][3:], expected[3:], atol=1e-4)  # the new ones


@pytest.mark.parametrize("column,value,shown,expected", [
    ("user.age", '"abc"', "'abc'", "expected a finite number (buckets <"),
    ("user.age", '"inf"', "'inf'", "expected a finite number"),
    ("user.age", "true", "True", "expected a finite number"),
    ("user.zip", "2138", "2138.0", "expected text (its first 1 characters are read; a number may have lost"),
    ("user.gender", "[1]", "[1]", "expected text or a number, one of F, M (others count as none)"),
    ("item.genre", "false", "False", "expected text or a number, labels joined by |, each one of Action, Comedy"),
])
def test_a_bad_feature_value_is_one_http_400_naming_column_row_value_and_expected(models, column, value, shown,
                                                                                 expected):
    *_, server = models["both"]
    body = ('{"dataframe_split": {"columns": ["user_id", "item_id", "%s"], "data": [[1, 1, null], [900, 1, %s]]}}'
            % (column, value))
    status, answer = server.post(body, "application/json")
    side, _, group = column.partition(".")
    assert status == 400, answer
    assert f"column {column}, row 1: {shown} is no value of this model's {side} feature '{group}': {expected}" \
        in answer["message"]


def test_feature_columns_a_model_has_no_tables_for_are_refused(models):
    for name, column, why in (("both", "user.height", "this model has no user feature 'height'"),
                              ("user", "item.genre", "this model has no item features"),
                              ("none", "user.age", "this model has no user features")):
        *_, server = models[name]
        status, answer = server.post(f"user_id,item_id,{column}\n1,1,x\n", "text/csv")
        assert status == 400 and f"column {column}: {why}: expected columns user_id, item_id" in answer["message"]
    assert "(it was trained without side features)" in answer["message"]
    status, answer = models["user"][-1].post("user_id,item_id,userage,note\n1,1,x,y\n", "text/csv")
    assert status == 200, answer  # other columns are not feature columns: ignored, as before


def test_the_served_encoder_agrees_with_side_features_on_every_group_kind(models):
    """serving.py restates `Group.encode` (it imports no pipeline code): both on tricky texts."""
    from pipeline import serving

    *_, data, _, _, folder, _ = models["both"]
    served = serving.RatingModel()
    served.load_context(SimpleNamespace(artifacts={"scorer": str(folder / "artifacts" / "scorer"),
                                                   "features": str(folder / "artifacts" / "features")}))
    texts = ["", "  ", "25", " 40 ", "18.0", "1e1", "-3", "99999", "1_000", "abc", "inf", "nan", "F", " M ", "f",
             "02138", "T8H1N", "9", "Action", "Action| |Comedy|Action", "|Drama|", "Noir", "Film-Noir|Sci-Fi",
             "1969.5", "1970", "2000"]
    for side in ("user", "item"):
        encoder = getattr(data.ratings, f"{side}_features")
        for group, spec in zip(encoder.groups, served.groups[side]):
            assert spec["kind"] == group.kind and spec["name"] == group.name
            for text in texts:
                try:
                    theirs = group.encode(text).tolist()
                except ValueError:
                    theirs = None
                assert serving._encode(text, spec) == theirs, (group.name, text)
    assert {g.kind for s in ("user", "item") for g in getattr(data.ratings, f"{s}_features").groups} == \
        {"numeric", "categorical", "multi"}


@pytest.mark.parametrize("name", ["both", "bayes", "ordinal"])
def test_the_exported_scorer_equals_the_trainer_for_known_ids(models, name):
    import mlflow

    model, data, *_, folder, _ = models[name]
    pairs = data.ratings.frame.iloc[data.test_rows][["user_id", "item_id"]]
    found = [pd.Index(ids).get_indexer(pairs[c]) for ids, c in ((data.user_ids, "user_id"),
                                                                 (data.item_ids, "item_id"))]
    rows = [torch.from_numpy(np.where(f < 0, len(ids), f)) for f, ids in zip(found, (data.user_ids, data.item_ids))]
    with torch.no_grad():
        expected = model.predict(*rows).numpy()
    scorer = mlflow.pytorch.load_model(str(folder))  # the pt2 scorer, unchanged by features
    np.testing.assert_allclose(scorer(torch.from_numpy(pairs.to_numpy())).detach().numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(load_bundle(str(folder)).score(pairs.user_id, pairs.item_id), expected, atol=1e-6)


def test_a_stack_carries_each_models_own_feature_tables_at_its_best_epoch(models):
    _, data, *_ = models["both"]
    configs = [TrainConfig(factors=4, epochs=8, lr=0.05, batch_size=64, features="user", patience=2),
               TrainConfig(factors=2, epochs=8, lr=0.01, batch_size=64, features="user")]
    options = dict(valid=data.part("valid"), features=data.features, **data.dims)
    stacked = fit_stack(data.part("train"), configs, [0, 1], **options)
    for config, seed, together in zip(configs, [0, 1], stacked):
        alone = fit(data.part("train"), config, seed=seed, **options)
        assert together.best_epoch == alone.best_epoch
        for mine, theirs in zip(together.model.side_tables["user"], alone.model.side_tables["user"]):
            assert mine.shape == (theirs.shape[0], config.factors + 2)
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    assert stacked[1].best_epoch < len(stacked[1].history)  # its tables come from before its last epoch
    again = fit(data.part("train"), configs[1].replace(epochs=stacked[1].best_epoch), seed=1, **options)
    for at_best, last in zip(stacked[1].model.side_tables["user"], again.model.side_tables["user"]):
        torch.testing.assert_close(at_best, last, rtol=1e-4, atol=1e-5)  # the best epoch's, not the last's


def test_save_model_needs_the_encoders_of_the_tables_it_carries(models, tmp_path):
    model, data, *_ = models["both"]
    seen = data.ratings.frame.iloc[data.train_rows]
    arguments = dict(user_ids=data.user_ids, item_ids=data.item_ids, seen=seen, titles={}, dataset="t", metadata={})
    sizes = [len(g.vocabulary) for g in data.ratings.user_features.groups]
    assert sizes[1:] == [2, 6]  # gender; zip's first characters
    with pytest.raises(ValueError, match=rf"the model has user feature tables of \[{', '.join(map(str, sizes))}\] "
                                         r"rows: expected features\['user'\] with groups of those vocabulary sizes, "
                                         r"found none"):
        save_model(tmp_path / "a", model, **arguments, features={"item": data.ratings.item_features})
    with pytest.raises(ValueError, match=r"found genre \(4\), year \(3\)"):
        save_model(tmp_path / "b", model, **arguments, features={"user": data.ratings.item_features,
                                                                 "item": data.ratings.item_features})


def _run(command, folder, store, *args) -> int:
    return command.main(["--model", str(folder), "--tracking-uri", store, *args])


def test_predict_and_recommend_score_a_new_user_from_its_features(models, capsys, mlflow_store, mlflow_globals):
    from pipeline import predict, recommend

    model, data, *_, folder, _ = models["both"]
    values = {"age": "25", "gender": "F", "zip": "02138"}
    flag = "age=25,gender=F,zip=02138"
    frame = pd.DataFrame({"user_id": [4242] * 2, "item_id": [int(data.item_ids[1]), ITEMS + 1],
                          **{f"user.{k}": v for k, v in values.items()}, "item.genre": [None, "Drama|Action"]})
    expected = _in_process(model, data, frame)
    assert _run(predict, folder, mlflow_store, "--user", "4242", "--user-features", flag, "--item", str(data.item_ids[1]),
                "--json") == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["rating"] == pytest.approx(float(expected[0]), abs=1e-5) and answer["from_features"] == ["user"]
    assert _run(predict, folder, mlflow_store, "--user", "4242", "--user-features", flag, "--item", str(ITEMS + 1),
                "--item-features", "genre=Drama|Action", "--json") == 0
    assert json.loads(capsys.readouterr().out)["rating"] == pytest.approx(float(expected[1]), abs=1e-5)
    assert _run(recommend, folder, mlflow_store, "--user", "4242", "--user-features", flag, "--top", "3", "--json") == 0
    ranked = json.loads(capsys.readouterr().out)["items"]
    candidates = sorted(load_bundle(str(folder)).seen.item_id.unique().tolist())
    everyone = _in_process(model, data, pd.DataFrame({"user_id": 4242, "item_id": candidates,
                                                      **{f"user.{k}": v for k, v in values.items()}}))
    assert [r["rating"] for r in ranked] == pytest.approx(sorted(everyone, reverse=True)[:3], abs=1e-5)


def test_the_commands_refuse_what_cannot_be_scored(models, capsys, mlflow_store, mlflow_globals):
    from pipeline import predict

    both, none = models["both"][4], models["none"][4]
    known = str(models["both"][1].user_ids[3])
    cases = [(both, ["--user", "4242"], "user 4242 does not exist in tiny's training data of"
                                        f" {both} (give --user-features to score it from its features)"),
             (both, ["--user", "4242", "--user-features", "height=2"], "--user-features 'height=2': expected "
                                                                       "group=value with a group of this model's"),
             (both, ["--user", "4242", "--user-features", "age=old"], "column user.age, row 0: 'old' is no value"),
             (none, ["--user", "4242", "--user-features", "age=25"], "--user-features: this model has no user "
                                                                     "features (it was trained without them)")]
    for folder, args, message in cases:
        assert _run(predict, folder, mlflow_store, *args, "--item", "1") == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {message}") and error.count("\n") == 1, error
    assert _run(predict, both, mlflow_store, "--user", known, "--user-features", "age=25", "--item", "1", "--json") == 0
    out, err = capsys.readouterr()
    assert f"note: user {known} is in the training data" in err and json.loads(out)["from_features"] == []
    assert _run(predict, both, mlflow_store, "--user", known, "--item", "1", "--json") == 0
    assert json.loads(capsys.readouterr().out)["rating"] == json.loads(out)["rating"]  # its features ignored
