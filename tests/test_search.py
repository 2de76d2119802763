"""A quick study end to end, in a temporary folder: MLflow runs, registry, the load paths, resume,
champion/challenger, divergence, and the errors that must stop a search before any work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient

from conftest import Workspace, free_port, interrupt_at, wait_until_up
from pipeline import ingest, search
from pipeline.space import SEARCH_SPACES
from pipeline.split import split

pytestmark = pytest.mark.slow


def _write_space(folder: Path, name: str, **changes) -> Path:
    raw = yaml.safe_load((SEARCH_SPACES / "quick.yaml").read_text())
    raw.update(changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One finished quick study (6 trials), shared by the read-only tests below."""
    ws = Workspace(tmp_path_factory.mktemp("study"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws.root)
        assert ws.search() == 0
    return ws


def test_one_parent_run_with_one_child_per_trial(done):
    parents = done.parents()
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in done.runs() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 6 == len(done.runs()) - 1
    assert sorted(int(c.data.tags["optuna.trial_number"]) for c in children) == list(range(6))
    for child in children:
        assert child.info.status == "FINISHED"  # pruning is not a failure: no red mark
        pruned = child.data.tags["optuna.state"] == "PRUNED"
        assert child.data.tags["optuna.state"] in ("COMPLETE", "PRUNED")
        assert child.data.tags.get("mlflow.note.content", "").startswith("Pruned: pruned at epoch") == pruned
        curve = done.client.get_metric_history(child.info.run_id, "valid_rmse")
        assert [m.step for m in curve] == list(range(1, len(curve) + 1)) and curve
    zero = next(c for c in children if c.data.tags["optuna.trial_number"] == "0")
    assert (zero.data.params["factors"], zero.data.params["optimizer"], zero.data.params["lr"],
            zero.data.params["batch_size"], zero.data.params["epochs"]) == ("30", "adam", "0.002", "512", "20")


def test_the_parent_run_carries_the_study(done):
    parent = done.parents()[0]
    artifacts = {a.path for a in done.client.list_artifacts(parent.info.run_id)}
    assert {"search_space.yaml", "resolved_config.json", "trials.csv", "plots"} <= artifacts
    plots = {a.path for a in done.client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/learning_curves.png", "plots/optimization_history.png"} <= plots
    tags, metrics = parent.data.tags, parent.data.metrics
    for key in ("data.fingerprint", "split.fingerprint", "git.commit", "version.torch", "version.optuna", "device"):
        assert tags[key]
    for key in ("study_best_valid_rmse", "test_rmse", "test_mae", "reference.d2l_config_test_rmse",
                "reference.global_mean_test_rmse", "reference.biases_only_test_rmse"):
        assert np.isfinite(metrics[key])
    assert metrics["test_rmse"] < metrics["reference.global_mean_test_rmse"]
    for metric in ("ndcg_at_10", "recall_at_10", "map_at_10"):  # the champion's and both baselines' lists
        for key in (metric, f"reference.biases_only_{metric}", f"reference.popularity_{metric}"):
            assert 0 <= metrics[key] <= 1, key
    assert metrics["reference.popularity_ndcg_at_10"] > 0
    contexts = {i.tags[0].value for i in parent.inputs.dataset_inputs}
    assert contexts == {"train", "valid", "test"}
    assert all(i.dataset.digest for i in parent.inputs.dataset_inputs)


def test_every_complete_trial_has_its_ranking_on_valid(done):
    parent = done.parents()[0]
    children = [r for r in done.runs() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    keys = ("valid_ndcg_at_10", "valid_recall_at_10", "valid_map_at_10")
    for child in children:
        complete = child.data.tags["optuna.state"] == "COMPLETE"
        assert all((0 <= child.data.metrics[k] <= 1) if complete else k not in child.data.metrics for k in keys)
    local = done.client.download_artifacts(parent.info.run_id, "trials.csv", str(done.root))
    trials = pd.read_csv(local)
    complete = trials[trials.state == "COMPLETE"]
    assert len(complete) and complete[list(keys)].notna().all().all()  # the trials table has them
    view = next(v for k, v in done.client.get_experiment(parent.info.experiment_id).tags.items()
                if k.startswith("mlflow.sharedViewState."))
    assert all(f"metrics.`{k}`" in json.loads(view)["selectedColumns"] for k in keys)  # and the comparison view


def test_the_champion_is_the_parent_runs_logged_model_with_its_test_metrics(done):
    parent = done.client.get_run(done.parents()[0].info.run_id)  # search_runs leaves the outputs out
    models = mlflow.search_logged_models(experiment_ids=[parent.info.experiment_id], output_format="list",
                                         filter_string=f"source_run_id = '{parent.info.run_id}'")
    assert [m.name for m in models] == [f"trial-{parent.data.tags['best_trial']}"]
    model = models[0]
    assert [o.model_id for o in parent.outputs.model_outputs] == [model.model_id]  # the run's "Logged models"
    linked = {m.key: m for m in model.metrics}  # the Models tab's columns
    for key in ("test_rmse", "test_mae", "ndcg_at_10", "recall_at_10", "map_at_10"):
        assert linked[key].value == parent.data.metrics[key] and linked[key].run_id == parent.info.run_id
        assert len(done.client.get_metric_history(parent.info.run_id, key)) == 1  # logged once, with the model
    # the registered version is this model (SQLite's registry keeps its source, not its model_id)
    assert done.client.get_model_version_by_alias("mf-movielens-quick", "champion").source == model.artifact_location


def test_a_retried_finish_links_its_reused_model_once(mlflow_store, tmp_path):
    from pipeline.tracking import Tracker

    tracker = Tracker.connect(mlflow_store, "unit")
    parent = tracker.create_parent("study", {})
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors: {}\n")
    key = {"optuna.study_name": "s", "optuna.best_trial": "3"}
    uri = tracker.log_model(folder, key, name="trial-3", metrics={"test_rmse": 0.9})
    assert tracker.log_model(folder, key, name="trial-3", metrics={"test_rmse": 0.8}) == uri  # reused, not relinked
    run = tracker.client.get_run(parent)
    assert [o.model_id for o in run.outputs.model_outputs] == [uri.removeprefix("models:/")]
    assert [(m.key, m.value) for m in tracker.client.get_logged_model(uri.removeprefix("models:/")).metrics] == [
        ("test_rmse", 0.9)]
    assert [m.value for m in tracker.client.get_metric_history(parent, "test_rmse")] == [0.9]


def test_the_quick_space_registers_under_its_own_name_and_keeps_it(done, capsys):
    assert [m.name for m in done.client.search_registered_models()] == ["mf-movielens-quick"]  # not production's
    study = optuna.load_study(study_name="ratings-quick", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(done.root / "optuna.journal"))))
    assert study.user_attrs["registered_model"] == "mf-movielens-quick"  # recorded from the space
    capsys.readouterr()
    assert done.search("--register-as", "mf-movielens") == 2  # refused before any work
    assert "--register-as 'mf-movielens': expected 'mf-movielens-quick'" in capsys.readouterr().err


def _pairs(ws):
    frame = pd.read_csv(ws.data)
    return np.array([[frame.user_id[0], frame.item_id[0]], [frame.user_id[5], frame.item_id[9]],
                     [10**6, frame.item_id[0]], [10**6, 10**6]], dtype=np.int64)


def test_registered_champion_loads_by_name_without_pickle_from_elsewhere(done, tmp_path):
    version = done.client.get_model_version_by_alias("mf-movielens-quick", "champion")
    assert str(version.version) == "1"
    m = done.parents()[0].data.metrics  # the registry page states the test scores
    assert version.description.startswith(
        f"test RMSE {m['test_rmse']:.4f}, MAE {m['test_mae']:.4f}, NDCG@10 {m['ndcg_at_10']:.4f}, "
        f"Recall@10 {m['recall_at_10']:.4f}, MAP@10 {m['map_at_10']:.4f} on split ")
    data = split(ingest.load(done.data), seed=0)  # quick.yaml's split
    # the four pairs, then an unknown user with every known item
    pairs = np.concatenate([_pairs(done), [[10**6, item] for item in data.item_ids]]).astype(np.int64)
    script = f"""
import json, mlflow, torch, pandas as pd, numpy as np
pairs = np.array({pairs.tolist()}, dtype=np.int64)
m = mlflow.pytorch.load_model("models:/mf-movielens-quick@champion")
a = m(torch.from_numpy(pairs)).detach().numpy().tolist()
p = mlflow.pyfunc.load_model("models:/mf-movielens-quick@champion")
b = np.asarray(p.predict(pd.DataFrame({{"user_id": pairs[:, 0], "item_id": pairs[:, 1]}}))).ravel().tolist()
print(json.dumps([a, b]))
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": done.uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    torch_pred, pyfunc_pred = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(torch_pred, pyfunc_pred, rtol=1e-6)
    assert all(1.0 <= x <= 5.0 for x in torch_pred)
    # unknown user and item: the average known user's mean score over the known items (the
    # fallback rows are the means of the known rows), unclamped there, so the model's mean
    average_user = np.array(torch_pred[4:])
    assert ((1.0 < average_user) & (average_user < 5.0)).all()
    assert torch_pred[3] == pytest.approx(average_user.astype(np.float64).mean(), abs=1e-4)
    assert abs(torch_pred[2] - torch_pred[3]) > 1e-4  # unknown user, known item: the item counts


def test_the_model_takes_named_columns_and_refuses_what_it_cannot_score(done):
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(done.uri)
    model = mlflow.pyfunc.load_model("models:/mf-movielens-quick@champion")
    (user, item), other = _pairs(done)[1], _pairs(done)[0]
    right = model.predict(pd.DataFrame({"user_id": [user, other[0]], "item_id": [item, other[1]]}))
    swapped = model.predict(pd.DataFrame({"item_id": [item, other[1]], "user_id": [user, other[0]]}))
    np.testing.assert_array_equal(right, swapped)  # found by name, whatever the order
    assert right[0] != model.predict(pd.DataFrame({"user_id": [item], "item_id": [user]}))[0]
    for bad, why in [(pd.DataFrame({"user": [user], "item": [item]}), "user_id"),
                     (pd.DataFrame({"user_id": [user + 0.5], "item_id": [item]}), "user_id"),
                     (pd.DataFrame({"user_id": ["abc"], "item_id": [item]}), "user_id")]:
        with pytest.raises(MlflowException, match=why):
            model.predict(bad)


def test_a_dataset_with_string_ids_is_registered_and_scored_by_name(tmp_path, monkeypatch):
    from pipeline import predict

    monkeypatch.chdir(tmp_path)
    ws = Workspace(tmp_path)
    frame = pd.read_csv(ws.data)
    frame["user_id"], frame["item_id"] = "u" + frame.user_id.astype(str), "movie " + frame.item_id.astype(str)
    frame.to_csv(ws.data, index=False)
    assert ws.search("--n-trials", "2", "--register-as", "mf-strings") == 0
    mlflow.set_tracking_uri(ws.uri)
    model = mlflow.pyfunc.load_model("models:/mf-strings@champion")
    data = split(ingest.load(ws.data), seed=0)  # quick.yaml's split
    test = data.ratings.frame.iloc[data.test_rows]
    predicted = model.predict(test[["item_id", "user_id"]])
    rmse = float(np.sqrt(np.mean((predicted - test.rating.to_numpy()) ** 2)))
    summary = optuna.load_study(study_name="ratings-quick", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal")))).user_attrs["summary"]
    assert rmse == pytest.approx(summary["test_rmse"], abs=1e-4)  # the registered model is the refit champion
    assert predict.main(["--model", "models:/mf-strings@champion", "--tracking-uri", ws.uri,
                         "--user", test.user_id.iloc[0], "--item", test.item_id.iloc[0]]) == 0


def test_predict_and_recommend_commands(done, capsys, monkeypatch):
    from pipeline import predict, recommend

    monkeypatch.setenv("MLFLOW_TRACKING_URI", done.uri)
    user, item = (int(x) for x in _pairs(done)[0])
    quick = ["--model", "models:/mf-movielens-quick@champion"]  # quick.yaml's register_as, not the default
    assert predict.main(["--user", str(user), "--item", str(item), "--json", *quick]) == 0
    rating = json.loads(capsys.readouterr().out)["rating"]
    assert 1.0 <= rating <= 5.0
    assert recommend.main(["--user", str(user), "--top", "5", "--json", *quick]) == 0
    items = json.loads(capsys.readouterr().out)["items"]
    seen = pd.read_csv(done.data).query("user_id == @user").item_id
    assert len(items) == 5 and [i["rating"] for i in items] == sorted((i["rating"] for i in items), reverse=True)
    assert len(set(i["item_id"] for i in items) & set(seen)) <= 1  # only a test-set item can reappear
    assert recommend.main(["--user", "123456", *quick]) == 2
    assert "user 123456 does not exist" in capsys.readouterr().err
    assert predict.main(["--user", str(user), "--item", "1", "--model", "models:/mf-movielens-quick@nobody"]) == 2
    assert "alias nobody not found" in capsys.readouterr().err


def test_serve_answers_with_the_same_numbers(done, tmp_path):
    import urllib.error
    import urllib.request

    port = free_port()
    # `mlflow models serve` execs `uvicorn` by name: the environment's bin folder must be on PATH.
    env = {**os.environ, "MLFLOW_TRACKING_URI": done.uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/mf-movielens-quick@champion",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        pairs = _pairs(done)
        body = json.dumps({"dataframe_split": {"columns": ["user_id", "item_id"], "data": pairs.tolist()}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                         {"Content-Type": "application/json"})
        served = json.loads(urllib.request.urlopen(request, timeout=30).read())["predictions"]
        for columns, data in ((["user", "item"], pairs.tolist()), (["user_id", "item_id"], [[20.5, 30]])):
            body = json.dumps({"dataframe_split": {"columns": columns, "data": data}}).encode()
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                                              {"Content-Type": "application/json"}), timeout=30)
            assert refused.value.code == 400
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)
    mlflow.set_tracking_uri(done.uri)
    model = mlflow.pytorch.load_model("models:/mf-movielens-quick@champion")
    expected = model(torch.from_numpy(pairs)).detach().numpy()
    np.testing.assert_allclose(np.asarray(served).ravel(), expected, rtol=1e-6)


# --- tests that change their own workspace ---------------------------------------------------


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return Workspace(tmp_path)


def test_a_rerun_resumes_the_study(ws):
    assert ws.search("--n-trials", "3") == 0
    parent = ws.parents()[0].info.run_id
    assert ws.search("--n-trials", "5") == 0
    assert [p.info.run_id for p in ws.parents()] == [parent]
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in ws.runs() if r.info.run_id != parent)
    assert numbers == [0, 1, 2, 3, 4]  # trials 0-2 were not redone
    versions = len(ws.client.search_model_versions("name='mf-movielens-quick'"))
    assert ws.search("--n-trials", "5") == 0  # nothing left to do: no trial, no new version
    assert len(ws.runs()) == 6 and len(ws.client.search_model_versions("name='mf-movielens-quick'")) == versions


def test_a_study_of_rmse_and_ndcg_shows_its_front_and_registers_its_lowest_valid_rmse(ws, capsys):
    space = _write_space(ws.root, "both", objective=["rmse", "ndcg@10"], pruner={"type": "none"})
    assert ws.search("--n-trials", "4", config=space) == 0
    study = optuna.load_study(study_name="ratings-both", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(ws.root / "optuna.journal"))))
    assert study.metric_names == ["valid_rmse", "valid_ndcg_at_10"] and len(study.directions) == 2
    summary, front = study.user_attrs["summary"], study.best_trials
    lowest = min(front, key=lambda t: t.values[0])
    assert sorted(summary["pareto_front"]) == sorted(t.number for t in front)
    assert summary["best_trial"] == lowest.number and summary["best_valid_rmse"] == lowest.values[0]
    parent = ws.parents()[0]
    plots = {a.path for a in ws.client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/pareto_front.png", "plots/optimization_history.png"} <= plots
    assert "plots/learning_curves.png" not in plots  # nothing is reported per epoch: no pruning
    assert parent.data.tags["best_trial"] == str(lowest.number)
    assert parent.data.metrics["champion_valid_ndcg_at_10"] == lowest.values[1]  # the champion's, by name
    assert "Pareto front trials" in capsys.readouterr().out


def test_champion_moves_only_for_a_better_model_on_the_same_split(ws):
    assert ws.search("--n-trials", "2") == 0
    worse = _write_space(ws.root, "worse", params={
        "factors": {"type": "fixed", "value": 2}, "optimizer": {"type": "fixed", "value": "sgd"},
        "lr": {"type": "fixed", "value": 0.001}, "weight_decay": {"type": "fixed", "value": 0.0}}, epochs=1)
    # the d2l trial 0 is in every study: a worse space still has it as its best, so cap it at trial 0
    assert ws.search("--n-trials", "1", "--study-name", "other", config=worse) == 0
    # (search_model_versions leaves aliases empty: ask each version)
    aliases = {str(v): ws.client.get_model_version("mf-movielens-quick", str(v)).aliases for v in (1, 2)}
    assert str(ws.client.get_model_version_by_alias("mf-movielens-quick", "champion").version) == "1"
    assert str(ws.client.get_model_version_by_alias("mf-movielens-quick", "challenger").version) == "2"
    other_split = _write_space(ws.root, "other-split", split={"strategy": "random", "test": 0.1, "valid": 0.1, "seed": 9})
    assert ws.search("--n-trials", "6", "--study-name", "third", config=other_split) == 0
    assert str(ws.client.get_model_version_by_alias("mf-movielens-quick", "champion").version) == "1"
    assert str(ws.client.get_model_version_by_alias("mf-movielens-quick", "challenger").version) == "3"
    assert {k: list(v) for k, v in aliases.items()} == {"1": ["champion"], "2": ["challenger"]}


def test_diverging_trials_fail_with_their_reason_and_the_study_goes_on(ws):
    diverging = _write_space(ws.root, "diverging", params={
        "optimizer": {"type": "fixed", "value": "sgd"}, "lr": {"type": "float", "low": 1e6, "high": 1e7},
        "weight_decay": {"type": "fixed", "value": 0.0}}, trials=3)
    assert ws.search(config=diverging) == 0  # trial 0 (d2l) completes and is registered
    failed = [r for r in ws.runs() if r.data.tags.get("optuna.state") == "FAIL"]
    assert failed and all(r.info.status == "FAILED" for r in failed)
    assert all("diverged at epoch" in r.data.tags["fail_reason"] for r in failed)


def test_a_study_name_reused_with_another_space_is_refused(ws, capsys):
    assert ws.search("--n-trials", "1") == 0
    other = _write_space(ws.root, "other", epochs=3)
    assert ws.search("--study-name", ws.parents()[0].data.tags["optuna.study_name"], config=other) == 2
    assert "was created for another space" in capsys.readouterr().err


@pytest.mark.parametrize("change,message", [
    (["--tracking-uri", "http://127.0.0.1:9"], "cannot reach the MLflow tracking server at http://127.0.0.1:9"),
    (["--storage", "postgresql+psycopg2://nobody@127.0.0.1:9/none"], "--storage postgresql+psycopg2://"),
    (["--storage", "/no/such/folder/j.journal"], "folder /no/such/folder does not exist"),
    (["--dataset", "ml-7k"], "unknown dataset 'ml-7k'"),
    (["--n-trials", "0"], "--n-trials 0"),
    (["--device", "cuda:99" if torch.cuda.is_available() else "cuda"], "--device 'cuda"),
    (["--tracking-uri", "http://me:hunter2@127.0.0.1:9"], "server at http://me:***@127.0.0.1:9"),
    (["--storage", "postgresql+psycopg2://me:hunter2@127.0.0.1:9/none"], "--storage postgresql+psycopg2://me:***@"),
    (["--timeout", "0"], "--timeout 0: expected > 0 seconds"),
    (["--timeout", "-1"], "--timeout -1: expected > 0 seconds"),
    (["--stack", "0"], "--stack 0: expected >= 1"),
    (["--tracking-uri", "sqlite:///{root}/ratings.csv/mlflow.db"], "cannot create or open"),
])
def test_errors_before_work_exit_2_and_log_nothing(ws, capsys, change, message):
    argv = ws.argv()
    for flag, value in zip(change[::2], change[1::2]):
        value = value.format(root=ws.root)
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert search.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "hunter2" not in err and "Traceback" not in err
    assert not (ws.root / "mlflow.db").exists() and not (ws.root / "optuna.journal").exists()


def test_a_worker_that_cannot_start_says_why_in_one_line(ws, capsys):
    from pipeline.search.workers import _worker

    with pytest.raises(SystemExit) as exit:
        _worker(search.SearchOptions.parse(ws.argv("--dataset", str(ws.root / "missing.csv"))))
    assert exit.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: worker {os.getpid()}: ") and "missing.csv" in err and "Traceback" not in err


@pytest.mark.parametrize("method,doing,code", [
    ("create_run", "creating the study's parent run", 2),
    ("create_model_version", "registering", 1),
])
def test_an_mlflow_failure_is_one_clear_error(ws, capsys, monkeypatch, method, doing, code):
    from mlflow.exceptions import MlflowException

    def refuse(self, *args, **kwargs):
        raise MlflowException("the store refuses")

    monkeypatch.setattr(MlflowClient, method, refuse)
    assert ws.search("--n-trials", "2") == code
    err = capsys.readouterr().err
    assert f"error: MLflow at {ws.uri}: {doing}" in err and "the store refuses" in err
    assert "Traceback" not in err
    monkeypatch.undo()
    assert [p.info.status for p in ws.parents()] == ([] if code == 2 else ["FAILED"])


def test_a_bad_search_space_exits_2(ws, capsys):
    bad = ws.root / "bad.yaml"
    bad.write_text("params: {factors: {type: int, low: 5, high: 1}}\n")
    assert ws.search(config=bad) == 2
    assert f"{bad}: params.factors" in capsys.readouterr().err
    assert not (ws.root / "mlflow.db").exists()


def test_a_space_too_large_for_the_machine_exits_2_before_any_work(ws, capsys):
    huge = _write_space(ws.root, "huge", params={"factors": {"type": "fixed", "value": 10**7}})
    assert ws.search(config=huge) == 2
    assert "params.factors: a mf model with 10000000 factors" in capsys.readouterr().err
    assert not (ws.root / "mlflow.db").exists()


def test_a_stack_too_large_for_the_device_exits_2_where_one_model_fits(ws, capsys, monkeypatch):
    from pipeline.search import session

    monkeypatch.setattr(session, "device_memory", lambda device: 1.5 * 2**30)  # a 1.5 GiB device
    wide = _stackable_space(ws.root)  # sparse_sgd: stackable
    raw = yaml.safe_load(wide.read_text())
    raw["params"]["factors"] = {"type": "fixed", "value": 40_000}  # ~1 GiB a model on this data
    wide.write_text(yaml.safe_dump(raw))
    assert ws.search("--stack", "4", config=wide) == 2
    assert "a stack of 4 mf models with 40000 factors" in capsys.readouterr().err
    assert not (ws.root / "mlflow.db").exists()
    one = session.prepare(search.SearchOptions.parse(ws.argv("--stack", "1", config=wide)))  # one at a time fits
    assert one.stack == 1


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_closes_everything_and_a_rerun_resumes(ws, signum):
    import signal
    import time

    # Slow trials (dense Adam, small batches: ~6 s each here), so that the signal lands in the middle of one.
    slow = _write_space(ws.root, "slow", epochs=100, patience=None,
                        pruner={"type": "none"}, params={"factors": {"type": "fixed", "value": 64},
                                                         "optimizer": {"type": "fixed", "value": "adam"},
                                                         "weight_decay": {"type": "fixed", "value": 0.0},
                                                         "lr": {"type": "fixed", "value": 0.0005},
                                                         "batch_size": {"type": "fixed", "value": 64}}, trials=3)
    argv = [a for a in ws.argv(config=slow) if a != "--quiet"]
    process = subprocess.Popen([sys.executable, "-m", "pipeline.search", *argv], cwd=ws.root,
                               stderr=subprocess.PIPE, text=True)
    for line in process.stderr:  # progress lines: interrupt in the middle of trial 1
        if "1/3 trials" in line:
            time.sleep(1.0)
            process.send_signal(getattr(signal, signum))
            break
    rest = process.stderr.read()
    assert process.wait(60) == 128 + getattr(signal, signum), rest
    assert "rerun the same command to resume" in rest
    parent = ws.parents()[0]
    assert parent.info.status == "KILLED"
    assert {r.info.status for r in ws.runs()} <= {"FINISHED", "KILLED"}  # nothing left RUNNING
    assert ws.client.search_registered_models() == []  # no half-made model
    assert ws.search(config=slow) == 0
    assert [p.info.run_id for p in ws.parents()] == [parent.info.run_id]
    assert ws.parents()[0].info.status == "FINISHED"
    complete = [r for r in ws.runs() if r.data.tags.get("optuna.state") == "COMPLETE"]
    assert len(complete) == 3
    trials = _trials(ws)
    assert trials[1].user_attrs["interrupted"] and trials[2].user_attrs["retry_of"] == 1  # run again, first
    assert str(ws.client.get_model_version_by_alias("mf-movielens-quick", "champion").version) == "1"


def test_the_same_command_gives_the_same_study(tmp_path, monkeypatch):
    results = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        ws = Workspace(folder)
        assert ws.search("--n-trials", "6") == 0
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "optuna.journal")))
        study = optuna.load_study(study_name=ws.parents()[0].data.tags["optuna.study_name"], storage=storage)
        results.append([(t.params, t.state, t.value, t.intermediate_values) for t in study.trials]
                       + [ws.parents()[0].data.metrics["test_rmse"]])
    assert results[0] == results[1]


# --- stacked trials (--stack) ---------------------------------------------------------------------


def _stackable_space(folder: Path) -> Path:
    """sparse_sgd at one batch size: every trial but the d2l one (Adam) can share a stack. Random
    sampling and no pruner, so trials asked together get what trials asked one by one get."""
    return _write_space(folder, "stackable", sampler={"type": "random"}, pruner={"type": "none"}, epochs=5, trials=5,
                        params={"optimizer": {"type": "fixed", "value": "sparse_sgd"},
                                "factors": {"type": "int", "low": 4, "high": 16},
                                "lr": {"type": "float", "low": 0.005, "high": 0.03, "log": True},
                                "weight_decay": {"type": "fixed", "value": 0.0},
                                "l2": {"type": "float", "low": 0.02, "high": 0.2, "log": True},
                                "batch_size": {"type": "fixed", "value": 256},
                                "init_std": {"type": "fixed", "value": 0.1}})


def _trials(ws: Workspace) -> list:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(ws.root / "optuna.journal")))
    return optuna.load_study(study_name=ws.parents()[0].data.tags["optuna.study_name"], storage=storage).trials


def test_stacked_trials_are_the_trials_run_one_at_a_time(tmp_path, monkeypatch):
    trials, workspaces = {}, {}
    for stack in ("1", "4"):
        folder = tmp_path / f"stack-{stack}"
        folder.mkdir()
        monkeypatch.chdir(folder)
        ws = workspaces[stack] = Workspace(folder)
        assert ws.search("--stack", stack, config=_stackable_space(folder)) == 0
        trials[stack] = _trials(ws)
    alone, stacked = trials["1"], trials["4"]
    # one batch of 4 (trial 0 alone, trials 1-3 stacked), then the last trial alone
    assert [t.user_attrs.get("stack_size") for t in stacked] == [1, 3, 3, 3, 1]
    assert [t.params for t in stacked] == [t.params for t in alone]
    assert [t.value for t in stacked] == pytest.approx([t.value for t in alone], rel=1e-5)
    for a, s in zip(alone, stacked):
        assert list(s.intermediate_values.values()) == pytest.approx(list(a.intermediate_values.values()), rel=1e-5)
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in workspaces["4"].runs()
            if "optuna.trial_number" in r.data.tags}
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert [runs[n].data.metrics["stack_size"] for n in range(5)] == [1, 3, 3, 3, 1]
    assert len(workspaces["4"].client.get_metric_history(runs[2].info.run_id, "valid_rmse")) == 5  # its own curve


def test_ctrl_c_in_a_stack_closes_every_trial_of_it_and_a_rerun_runs_them_again(ws, monkeypatch):
    """Ctrl-C in the first batch fails every trial of it, as many as the cap: the rerun still
    reaches the cap, running the interrupted trials again (trial 0 stays the d2l reference)."""
    space, cap = _stackable_space(ws.root), ("--stack", "3", "--n-trials", "3")
    with monkeypatch.context() as patch:  # the rerun below is not interrupted
        interrupt_at(patch, 0, 2)  # in trial 0 (d2l, alone); trials 1-2, a stack, have begun
        assert ws.search(*cap, config=space) == 130
    assert {t.number: t.state.name for t in _trials(ws)} == {0: "FAIL", 1: "FAIL", 2: "FAIL"}
    status = {int(r.data.tags["optuna.trial_number"]): r.info.status for r in ws.runs() if "optuna.trial_number" in r.data.tags}
    assert status == {0: "KILLED", 1: "KILLED", 2: "KILLED"}
    assert ws.search(*cap, config=space) == 0
    trials = _trials(ws)
    assert [t.state.name for t in trials[3:]] == ["COMPLETE"] * 3
    assert [t.user_attrs["retry_of"] for t in trials[3:]] == [0, 1, 2]
    assert [t.params for t in trials[4:]] == [t.params for t in trials[1:3]]
    assert trials[3].user_attrs["reference"] == "d2l"
    assert "RUNNING" not in {r.info.status for r in ws.runs()}


# --- names and flags a study keeps (issue 18) -----------------------------------------------------


@pytest.mark.parametrize("flag,value,message", [
    ("--register-as", "team/model", "--register-as 'team/model': expected a registered model name without '/' or ':'"),
    ("--register-as", "", "--register-as '': expected a registered model name (not empty)"),
    ("--register-as", "..", "--register-as '..': expected a registered model name other than '.'"),
    ("--register-as", "m" * 300, "(300 characters): expected at most 256 characters"),
    ("--experiment", "", "--experiment '': expected an MLflow experiment name"),
    ("--experiment", "e" * 300, "(300 characters): expected at most 256 characters"),
    ("--study-name", "s" * 500, "--study-name 'ssss"),
])
def test_a_bad_name_exits_2_before_any_work(ws, capsys, flag, value, message):
    assert ws.search(flag, value) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (ws.root / "mlflow.db").exists() and not (ws.root / "optuna.journal").exists()


def test_a_study_keeps_its_experiment_and_registered_model(ws, capsys):
    # a legal name with a quote: MLflow's search filters must quote it (and nothing empty is left behind)
    assert ws.search("--n-trials", "1", "--register-as", "bob's model") == 0
    assert str(ws.client.get_model_version_by_alias("bob's model", "champion").version) == "1"
    capsys.readouterr()
    for flag, value, created in (("--experiment", "other", "pipeline"), ("--register-as", "mf-other", "bob's model")):
        assert ws.search("--n-trials", "1", "--register-as", "bob's model", flag, value) == 2
        err = capsys.readouterr().err
        assert f"{flag} {value!r}: expected {created!r}, what study 'ratings-quick' was created with" in err
        assert "a new --study-name" in err
    assert [e.name for e in ws.client.search_experiments()] == ["pipeline", "Default"]  # no trace of 'other'
    assert [m.name for m in ws.client.search_registered_models()] == ["bob's model"]
    assert ws.search("--n-trials", "2", "--register-as", "bob's model") == 0  # the same flags resume it


def test_a_store_locked_during_a_trial_leaves_no_run_running(ws, monkeypatch):
    """Trial 1's run is created, then the store is locked until the next trial starts: nothing of
    trial 1 can be written (its params, its end). The search goes on, and closes that run."""
    from mlflow.exceptions import MlflowException

    locked: list[str] = []
    create_run = MlflowClient.create_run

    def creating(self, experiment_id, *args, **kwargs):
        run = create_run(self, experiment_id, *args, **kwargs)
        trial_one = (kwargs.get("tags") or {}).get("optuna.trial_number") == "1"
        locked[:] = [run.info.run_id] if trial_one else []
        return run

    def refusing(method):
        def call(self, run_id, *args, **kwargs):
            if run_id in locked:
                raise MlflowException("(sqlite3.OperationalError) database is locked\n[SQL: UPDATE runs ...]",
                                      error_code="TEMPORARILY_UNAVAILABLE")
            return method(self, run_id, *args, **kwargs)
        return call

    monkeypatch.setattr(MlflowClient, "create_run", creating)
    for name in ("log_batch", "set_terminated", "update_run"):
        monkeypatch.setattr(MlflowClient, name, refusing(getattr(MlflowClient, name)))
    assert ws.search("--n-trials", "3") == 0
    monkeypatch.undo()
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in ws.runs() if "optuna.trial_number" in r.data.tags}
    assert runs[1].info.status == "FAILED" and runs[1].data.tags["optuna.state"] == "FAIL"
    assert "RUNNING" not in {r.info.status for r in ws.runs()}
    assert [t.state.name for t in _trials(ws)][:2] == ["COMPLETE", "FAIL"]


def test_the_memory_check_sizes_no_more_models_than_the_cap_trains(ws, capsys, monkeypatch):
    from pipeline.search import session

    monkeypatch.setattr(session, "device_memory", lambda device: 1.5 * 2**30)  # a 1.5 GiB device
    wide = _stackable_space(ws.root)
    raw = yaml.safe_load(wide.read_text())
    raw["params"]["factors"] = {"type": "fixed", "value": 40_000}  # ~1 GiB a model on this data
    wide.write_text(yaml.safe_dump(raw))
    one = session.prepare(search.SearchOptions.parse(ws.argv("--stack", "4", "--n-trials", "1", config=wide)))
    assert one.stack == 4 and one.cap.n == 1  # a cap of 1 never trains a stack of 4: one model fits
    with pytest.raises(search.SearchError, match="a stack of 2 mf models with 40000 factors"):
        session.prepare(search.SearchOptions.parse(ws.argv("--stack", "4", "--n-trials", "2", config=wide)))


def test_a_tracking_database_that_refuses_the_role_exits_2_at_once(ws, capsys):
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test").close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 ({exc})")
    import time

    started = time.monotonic()
    argv = ws.argv()
    argv[argv.index("--tracking-uri") + 1] = "postgresql+psycopg2://no_such_role:hunter2@127.0.0.1:5432/test"
    assert search.main(argv) == 2
    assert time.monotonic() - started < 15  # not MLflow's ~100 s of retries
    err = capsys.readouterr().err
    assert err.startswith("error: cannot connect to the MLflow tracking database at postgresql+psycopg2://no_such_role:***@")
    assert 'role "no_such_role" does not exist' in err and len(err.strip().splitlines()) == 1
    assert not (ws.root / "optuna.journal").exists()
