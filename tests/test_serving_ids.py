"""serving.py behind MLflow's own scoring app on loopback (uvicorn in a thread, seconds): each id
column keeps its kind (integer users with string items, and the reverse, score exactly as in
process), text/csv answers as JSON does, and a value that cannot be an id of its column is an
HTTP 400 naming the column and the value, while an unseen id of the column's kind is scored."""

import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import free_port

from pipeline import ingest
from pipeline.bundle import load_bundle, save_model
from pipeline.model import MatrixFactorization
from pipeline.ratings import validate
from pipeline.split import split
from pipeline.training import TrainConfig, fit

KINDS = ["int-int", "int-str", "str-int", "str-str"]


def _ids(values: pd.Series, kind: str, prefix: str) -> pd.Series:
    """Integer ids shifted so that -20 is one of them; string ids, one of them not a number."""
    if kind == "int":
        return values - 25
    text = values.astype(str)
    return text.where(values != values.min(), prefix)  # "x" or "u": the column stays text


def _trained(root, kinds: str):
    """A 3-epoch model of a 60 x 40 frame with these id kinds, saved: (model, split, folder)."""
    frame = ingest.synthetic(60, 40, 1200, rank=3, noise=0.3, seed=4).frame
    user_kind, item_kind = kinds.split("-")
    frame = frame.assign(user_id=_ids(frame.user_id, user_kind, "u"), item_id=_ids(frame.item_id, item_kind, "x"))
    data = split(validate(frame, "tiny", None, name="tiny", rating_scale=(1.0, 5.0)), seed=0)
    model = fit(data.part("train+valid"), TrainConfig(factors=4, epochs=3, lr=0.02, init_std=0.1), device="cpu",
                **data.dims).model
    seen = data.ratings.frame.iloc[np.concatenate([data.train_rows, data.valid_rows])]
    save_model(root / kinds, model, user_ids=data.user_ids, item_ids=data.item_ids, seen=seen, titles={},
               dataset="tiny", metadata={})
    return model, data, root / kinds


class _Server:
    """MLflow's scoring app (what `mlflow models serve` runs) for one model folder, on loopback."""

    def __init__(self, folder) -> None:
        import mlflow
        import uvicorn
        from mlflow.pyfunc import scoring_server

        app = scoring_server.init(mlflow.pyfunc.load_model(str(folder)))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/invocations"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, f"{self.url}: the server did not start"
            time.sleep(0.05)

    def post(self, body: str, content_type: str) -> tuple[int, dict]:
        request = urllib.request.Request(self.url, body.encode(), {"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read())

    def json(self, rows: list) -> tuple[int, dict]:
        return self.post(json.dumps({"dataframe_split": {"columns": ["user_id", "item_id"], "data": rows}}),
                         "application/json")

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Each id-kind pair's trained model, its split, and a scoring server for it."""
    root = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        patch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")  # scoring_server.init sets it; put back after
        built = {kinds: _trained(root, kinds) for kinds in KINDS}
        servers = {kinds: _Server(folder) for kinds, (_, _, folder) in built.items()}
        yield {kinds: (model, data, folder, servers[kinds]) for kinds, (model, data, folder) in built.items()}
        for server in servers.values():
            server.close()


def _test_pairs(data) -> pd.DataFrame:
    """The test rows' raw ids (some unseen in training: cold rows are kept) and two unseen pairs."""
    pairs = data.ratings.frame.iloc[data.test_rows][["user_id", "item_id"]].reset_index(drop=True)
    unseen = {c: 10**6 if pd.api.types.is_integer_dtype(pairs[c]) else "nobody" for c in pairs}
    extra = pd.DataFrame({"user_id": [unseen["user_id"], pairs.user_id[0]],
                          "item_id": [pairs.item_id[0], unseen["item_id"]]})
    return pd.concat([pairs, extra], ignore_index=True)


def _in_process(model: MatrixFactorization, data, pairs: pd.DataFrame) -> np.ndarray:
    """The trained model's own clamped scores: raw ids to rows by the split's maps (unseen: the fallback)."""
    rows = []
    for known, column in ((data.user_ids, "user_id"), (data.item_ids, "item_id")):
        found = pd.Index(known).get_indexer(pairs[column])
        rows.append(torch.from_numpy(np.where(found < 0, len(known), found)))
    with torch.no_grad():
        return model.predict(*rows).numpy()


@pytest.mark.parametrize("kinds", KINDS)
def test_each_column_keeps_its_kind_through_the_export_pyfunc_and_server(models, kinds):
    model, data, folder, server = models[kinds]
    pairs = _test_pairs(data)
    expected = _in_process(model, data, pairs)
    assert len(set(np.round(expected, 4))) > len(pairs) // 2  # not the fallback row for every pair
    np.testing.assert_allclose(load_bundle(str(folder)).score(pairs.user_id, pairs.item_id), expected, atol=1e-6)
    status, answer = server.json(list(zip(pairs.user_id.tolist(), pairs.item_id.tolist())))  # Python ints, strs
    assert status == 200, answer
    np.testing.assert_allclose(np.ravel(answer["predictions"]), expected, atol=1e-6)


@pytest.mark.parametrize("kinds", KINDS)
def test_text_csv_answers_as_json_does(models, kinds):
    model, data, _, server = models[kinds]
    pairs = _test_pairs(data)
    status, answer = server.post(pairs.to_csv(index=False), "text/csv")
    assert status == 200, answer
    np.testing.assert_allclose(np.ravel(answer["predictions"]), _in_process(model, data, pairs), atol=1e-6)
    digits = pairs[~pairs.isin(["u", "x", "nobody"]).any(axis=1)]  # string columns CSV reads as numbers
    status, answer = server.post(digits.to_csv(index=False), "text/csv; charset=utf-8")
    assert status == 200, answer
    np.testing.assert_allclose(np.ravel(answer["predictions"]), _in_process(model, data, digits), atol=1e-6)


@pytest.mark.parametrize("value,shown", [
    ("Infinity", "inf"), ("1e30", "1e+30"), ("123456789012345678901234567890", "123456789012345678901234567890"),
    ("true", "True"), ("20.5", "20.5"), ('"abc"', "'abc'"), ("null", "a missing value"),
    (str(2**64 - 20), str(2**64 - 20)), (str(2**63), str(2**63))])
def test_a_json_value_that_cannot_be_an_integer_id_is_refused(models, value, shown):
    *_, server = models["int-str"]
    body = '{"dataframe_split": {"columns": ["user_id", "item_id"], "data": [[-20, "3"], [%s, "3"]]}}' % value
    status, answer = server.post(body, "application/json")
    assert status == 400, answer
    refusal = f"column user_id, row 1: {shown} cannot be one of this model's user ids: expected an integer"
    assert refusal in answer["message"]


@pytest.mark.parametrize("value", ["abc", "true", "1e30", "20.5", str(2**64 - 20), "99999999999999999999999"])
def test_a_csv_value_that_cannot_be_an_integer_id_is_refused(models, value):
    *_, server = models["str-int"]
    status, answer = server.post(f"user_id,item_id\nu,3\nu,{value}\n", "text/csv")
    assert status == 400, answer
    assert "column item_id, row 1: " in answer["message"] and "expected an integer" in answer["message"]


def test_an_id_beyond_int64_is_refused_not_wrapped_onto_another_user(models):
    model, data, _, server = models["int-int"]
    assert -20 in data.user_ids and 10 in data.item_ids
    status, answer = server.json([[-20, 10], [2**64 - 20, 10]])
    assert status == 400 and str(2**64 - 20) in answer["message"]
    pairs = pd.DataFrame({"user_id": [-20, 2**63 - 1, -(2**63)], "item_id": [10] * 3})
    status, answer = server.json(pairs.to_numpy().tolist())  # in range, two of them unseen: scored
    assert status == 200, answer
    np.testing.assert_allclose(np.ravel(answer["predictions"]), _in_process(model, data, pairs), atol=1e-6)
    status, answer = server.json([[-20.0, 10]])  # an integral float is the integer
    assert status == 200 and answer["predictions"][0] == pytest.approx(_in_process(model, data, pairs)[0], abs=1e-6)


def test_a_string_column_refuses_booleans_and_missing_values(models):
    *_, server = models["int-str"]
    for value, shown in (("true", "True"), ("null", "a missing value"), ("Infinity", "inf"), ("1e30", "1e+30")):
        body = '{"dataframe_split": {"columns": ["user_id", "item_id"], "data": [[-20, %s]]}}' % value
        status, answer = server.post(body, "application/json")
        refusal = f"column item_id, row 0: {shown} cannot be one of this model's item ids: expected text"
        assert status == 400 and refusal in answer["message"], answer


def test_numbers_do_not_stand_for_string_ids_they_cannot_name(tmp_path, monkeypatch):
    """Items "007" and "7" are two ids: CSV reads both as 7, so a number is refused, never guessed."""
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")
    model = MatrixFactorization(2, 3, 2, global_mean=3.0)
    model.reset_parameters(torch.Generator().manual_seed(0), std=1.0)
    items = np.array(["007", "7", "x"], dtype=object)
    seen = pd.DataFrame({"user_id": [1, 2, 2], "item_id": items})
    save_model(tmp_path / "m", model, user_ids=np.array([1, 2]), item_ids=items, seen=seen, titles={},
               dataset="tiny", metadata={})
    server = _Server(tmp_path / "m")
    try:
        status, answer = server.json([[1, "007"], [1, "7"], [1, " x "]])
        with torch.no_grad():
            expected = model.predict(torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2])).numpy()
        assert len(set(np.round(expected, 4))) == 3  # three items, three scores
        assert status == 200 and np.allclose(np.ravel(answer["predictions"]), expected, atol=1e-6)
        for status, answer in (server.json([[1, 7]]), server.post("user_id,item_id\n1,007\n", "text/csv")):
            refusal = "column item_id, row 0: 7 cannot be one of this model's item ids: expected text"
            assert status == 400 and refusal in answer["message"] and "send them as JSON strings" in answer["message"]
    finally:
        server.close()
