"""The MLflow edge on a temporary SQLite store (`mlflow_store`): the one process-wide set-up,
parent and child runs, the batched learning curves, the logged model and the registry with its
promotion rule, and the errors as one TrackingError."""

import logging
import os
import shutil
import sqlite3
import time

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from conftest import free_port
from pipeline import tracking
from pipeline.registry import Standing, choose_alias, filter_literal
from pipeline.tracking import Tracker, TrackingError, configure_mlflow, reported

KEY = {"optuna.study_name": "s", "optuna.best_trial": "3"}
PORT = free_port()  # nobody listens there


@pytest.fixture
def tracker(mlflow_store) -> Tracker:
    t = Tracker.connect(mlflow_store, "unit")
    t.create_parent("study", {"optuna.study_name": "s"})
    return t


def _model_folder(tmp_path, name: str = "model"):
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    return folder


# --- configured once per command; a Tracker changes nothing global ------------------------------


def _process_wide() -> tuple:
    # MLflow's own telemetry toggles `_MLFLOW_TELEMETRY_SESSION_ID` by itself: not ours to compare
    env = {k: v for k, v in os.environ.items() if not k.startswith("_MLFLOW")}
    return env, mlflow.get_tracking_uri(), mlflow.get_registry_uri(), logging.getLogger("mlflow").level


def test_a_tracker_changes_nothing_process_wide(mlflow_store, mlflow_globals, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'default.db'}")  # the process default
    before = _process_wide()
    tracker = Tracker.connect(mlflow_store, "unit")
    tracker.create_parent("study", {})
    tracker.close_parent("FINISHED")
    assert _process_wide() == before
    assert not (tmp_path / "default.db").exists()  # the tracker used its own store only


def test_configure_mlflow_is_the_commands_one_set_up(mlflow_globals, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own settings win
    uri = f"sqlite:///{tmp_path / 'x.db'}"
    assert configure_mlflow(uri) == uri
    assert mlflow.get_tracking_uri() == uri == mlflow.get_registry_uri()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5" and os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"
    assert logging.getLogger("mlflow").level == logging.WARNING
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert configure_mlflow(None) == "sqlite:///elsewhere.db"  # no flag: the environment's


# --- runs -------------------------------------------------------------------------------------------


def test_children_hang_under_the_parent_with_their_params_and_states(tracker):
    client = tracker.client
    done, dead = (tracker.start_trial(n, {"factors": 8, "lr": 0.01}, "s") for n in (0, 1))
    assert {r.info.run_id for r in tracker.running_children()} == {done.run_id, dead.run_id}
    done.end("FINISHED", {"optuna.state": "PRUNED"})
    tracker.fail_run(dead.run_id, "worker died")
    tracker.fail_run(done.run_id, "not running: left alone")
    first, second = client.get_run(done.run_id), client.get_run(dead.run_id)
    assert first.data.tags["mlflow.parentRunId"] == tracker.parent_id == second.data.tags["mlflow.parentRunId"]
    assert first.data.params == {"factors": "8", "lr": "0.01"} and first.data.tags["optuna.trial_number"] == "0"
    assert (first.info.status, first.data.tags["optuna.state"]) == ("FINISHED", "PRUNED")
    assert (second.info.status, second.data.tags["fail_reason"]) == ("FAILED", "worker died")
    assert tracker.running_children() == []


def test_a_parent_is_reopened_by_id_and_closed_with_its_status(tracker):
    tracker.close_parent("KILLED")
    other = Tracker.connect(tracker.tracking_uri, "unit")
    assert not other.reopen_parent("0" * 32, {})
    assert other.reopen_parent(tracker.parent_id, {"device": "cpu"})
    run = other.client.get_run(tracker.parent_id)
    assert run.info.status == "RUNNING" and run.data.tags["device"] == "cpu"
    other.log_parent(params={"best.factors": 8}, metrics={"test_rmse": 0.9}, tags={"best_trial": 3})
    other.close_parent("FINISHED")
    other.client.delete_run(tracker.parent_id)  # in `mlflow ui`: the study gets a new parent, as if lost
    assert not other.reopen_parent(tracker.parent_id, {})
    run = other.client.get_run(tracker.parent_id)
    assert run.info.status == "FINISHED" and run.data.metrics["test_rmse"] == 0.9
    assert run.data.params["best.factors"] == "8" and run.data.tags["best_trial"] == "3"


def test_a_trials_curve_is_written_in_batches(tracker, monkeypatch):
    writes = []
    real = MlflowClient.log_batch
    monkeypatch.setattr(MlflowClient, "log_batch", lambda self, run_id, **kw: writes.append(kw) or real(self, run_id, **kw))
    run = tracker.start_trial(0, {}, "s")
    writes.clear()
    for epoch in range(1, 4):
        run.epoch(epoch, train_mse=1.0 / epoch, valid_rmse=2.0 / epoch)
    assert writes == []  # buffered: one call per metric would cost more than an epoch
    monkeypatch.setattr(tracking, "_FLUSH_SECONDS", 0.0)
    run.epoch(4, train_mse=0.25, valid_rmse=0.5)
    assert len(writes) == 1 and len(writes[0]["metrics"]) == 8  # the four epochs, in one call
    run.log(best_valid_rmse=0.5)
    run.end("FINISHED", {"optuna.state": "COMPLETE"})
    assert len(writes) == 2  # the final metrics and tags with the run's end
    history = tracker.client.get_metric_history(run.run_id, "valid_rmse")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0), (3, 2.0 / 3), (4, 0.5)]
    finished = tracker.client.get_run(run.run_id)
    assert finished.info.status == "FINISHED" and finished.data.metrics["best_valid_rmse"] == 0.5


def test_the_comparison_view_is_saved_in_the_experiment(tracker):
    tracker.share_trials_view("s", ["factors", "lr"])
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    (key,) = [k for k in tags if k.startswith("mlflow.sharedViewState.")]
    assert tracker.parent_id in tags[key] and "params.`lr`" in tags[key]
    assert tracker.trials_view_link("s").endswith("viewStateShareKey=" + key.rsplit(".", 1)[1])


# --- the logged model and the registry ------------------------------------------------------------


def test_a_lookup_deletes_nothing_and_the_model_is_logged_once_per_key(tracker, tmp_path):
    client = tracker.client
    half = client.create_logged_model(tracker.experiment_id, name="model", source_run_id=tracker.parent_id, tags=KEY)
    registry = tracker._registry()
    assert registry.find_logged_model(KEY) is None
    assert str(client.get_logged_model(half.model_id).status) == "PENDING"  # looked at, not touched
    uri = tracker.log_model(_model_folder(tmp_path), KEY)
    assert tracker.log_model(_model_folder(tmp_path, "again"), KEY) == uri  # a retried finish reuses it
    models = client.search_logged_models([tracker.experiment_id])
    assert [(f"models:/{m.model_id}", str(m.status)) for m in models] == [(uri, "READY")]  # the half one discarded
    assert registry.find_logged_model({**KEY, "optuna.best_trial": "4"}) is None


def test_champion_moves_only_for_a_better_model_on_the_same_split(tracker, tmp_path):
    def register(trial: int, rmse: float, split: str) -> tuple[str, str]:
        key = {**KEY, "optuna.best_trial": str(trial)}
        uri = tracker.log_model(_model_folder(tmp_path, f"m{trial}"), key)
        return tracker.register(uri, "mf", rmse, split, key)

    assert register(1, 0.90, "split-a") == ("1", "champion")
    assert register(1, 0.90, "split-a") == ("1", "champion")  # the same key again: found, not registered twice
    assert register(2, 0.95, "split-a") == ("2", "challenger")
    assert register(3, 0.90000001, "split-a") == ("3", "challenger")  # equal as stored: no move
    assert register(4, 0.85, "split-a") == ("4", "champion")
    assert register(5, 0.50, "split-b") == ("5", "challenger")  # another split's RMSE is not comparable
    aliases = tracker.client.get_registered_model("mf").aliases
    assert {alias: str(version) for alias, version in aliases.items()} == {"champion": "4", "challenger": "5"}


@pytest.mark.parametrize("current,candidate,alias", [
    (None, Standing("1", 0.9, "a"), "champion"),
    (Standing("1", 0.9, "a"), Standing("1", 0.9, "a"), "champion"),
    (Standing("1", 0.9, "a"), Standing("2", 0.89, "a"), "champion"),
    (Standing("1", 0.9, "a"), Standing("2", 0.9, "a"), "challenger"),
    (Standing("1", 0.9, "a"), Standing("2", 0.91, "a"), "challenger"),
    (Standing("1", 0.9, "a"), Standing("2", 0.5, "b"), "challenger"),
    (Standing("1", float("inf"), None), Standing("2", 0.5, "a"), "challenger"),  # someone else's champion
])
def test_choose_alias(current, candidate, alias):
    assert choose_alias(current, candidate) == alias


def test_a_standing_reads_the_versions_tags():
    class Version:
        def __init__(self, tags):
            self.version, self.tags = 7, tags

    assert Standing.of(Version({"test_rmse": "0.874900", "split_fingerprint": "f"})) == Standing("7", 0.8749, "f")
    assert Standing.of(Version({})) == Standing("7", float("inf"), None)
    assert Standing.of(Version({"test_rmse": "n/a"})).test_rmse == float("inf")


# --- errors ---------------------------------------------------------------------------------------


def test_mlflow_errors_are_one_tracking_error_naming_the_store_and_the_step():
    uri = "http://user:hunter2@tracking.example:5000"
    with pytest.raises(TrackingError) as error, reported(uri, "logging the model"):
        raise MlflowException("the store refuses")
    assert str(error.value).startswith("MLflow at http://") and "logging the model failed: the store refuses" in str(error.value)
    assert "hunter2" not in str(error.value) and error.value.__cause__ is None
    with pytest.raises(TrackingError, match="writing trials.csv failed: .*No space left"), reported(uri, "writing trials.csv"):
        raise OSError(28, "No space left on device")


def test_a_store_that_cannot_be_opened_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(TrackingError, match="cannot create or open"):
        Tracker.connect(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}", "unit")
    with pytest.raises(TrackingError, match="cannot reach the MLflow tracking server at http://127.0.0.1:"):
        Tracker.connect(f"http://127.0.0.1:{free_port()}", "unit", wait=0.0)


def test_a_store_failure_during_a_step_names_the_step(tracker, monkeypatch, tmp_path):
    def refuse(self, *args, **kwargs):
        raise MlflowException("the store refuses")

    uri = tracker.log_model(_model_folder(tmp_path), KEY)
    monkeypatch.setattr(MlflowClient, "create_model_version", refuse)
    with pytest.raises(TrackingError, match=f"registering {uri} as 'mf' failed: the store refuses"):
        tracker.register(uri, "mf", 0.9, "a", KEY)


# --- store failures outside MlflowException, names MLflow's filters must quote --------------------


def test_a_store_error_is_one_line_naming_the_store():
    sql_error = "(sqlite3.OperationalError) database is locked\n[SQL: SELECT 1]\n(Background on this error at: x)"
    with pytest.raises(TrackingError) as error, reported("postgresql://me:hunter2@db/x", "tagging"):
        raise MlflowException(sql_error)
    assert str(error.value) == "MLflow at postgresql://me:***@db/x: tagging failed: (sqlite3.OperationalError) database is locked"
    import sqlalchemy.exc

    with pytest.raises(TrackingError, match=r"^MLflow at sqlite:///x.db: tagging failed: \(sqlite3.OperationalError\) "
                                            r"database is locked$"), reported("sqlite:///x.db", "tagging"):
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))


def test_a_sqlite_store_locked_by_another_process_is_one_tracking_error(_empty_mlflow_db, tmp_path):
    shutil.copy(_empty_mlflow_db, tmp_path / "locked.db")
    holder = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # what another process writing to it holds
    try:
        with pytest.raises(TrackingError, match=r"MLflow at sqlite:///.*locked.db: opening experiment 'unit' failed: "
                                                r".*database is locked$"):
            Tracker.connect(f"sqlite:///{tmp_path / 'locked.db'}", "unit")
    finally:
        holder.close()


def test_configure_mlflow_leaves_database_errors_to_one_tracking_error(mlflow_globals, tmp_path):
    db_log = logging.getLogger("mlflow.store.db.utils")
    level = db_log.level
    try:
        configure_mlflow(f"sqlite:///{tmp_path / 'x.db'}")
        assert not db_log.isEnabledFor(logging.ERROR)  # MLflow logs each one with a traceback, then raises it
    finally:
        db_log.setLevel(level)


def _postgres() -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test").close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 ({exc})")


@pytest.mark.parametrize("uri,reason", [
    ("postgresql+psycopg2://no_such_role:hunter2@127.0.0.1:5432/test", 'role "no_such_role" does not exist'),
    ("postgresql+psycopg2://postgres@127.0.0.1:5432/no_such_database", 'database "no_such_database" does not exist'),
])
def test_a_database_that_refuses_us_fails_at_once(uri, reason):
    _postgres()
    started = time.monotonic()
    with pytest.raises(TrackingError) as error:
        Tracker.connect(uri, "unit", wait=60.0)  # even a worker's wait: this cannot heal
    assert time.monotonic() - started < 15  # not MLflow's ~100 s of retries
    message = str(error.value)
    assert message.startswith("cannot connect to the MLflow tracking database at postgresql+psycopg2://")
    assert reason in message and "hunter2" not in message and "\n" not in message


def test_a_database_that_does_not_answer_is_named(monkeypatch):
    started = time.monotonic()
    with pytest.raises(TrackingError, match=rf"at postgresql\+psycopg2://me:\*\*\*@127.0.0.1:{PORT}/x \(.*refused"):
        Tracker.connect(f"postgresql+psycopg2://me:hunter2@127.0.0.1:{PORT}/x", "unit")
    assert time.monotonic() - started < 15


def test_a_database_uri_without_its_driver_is_named():
    with pytest.raises(TrackingError, match=r"--tracking-uri postgresql\+nosuchdriver://me:\*\*\*@db/x: no database "
                                            r"driver for it .*postgresql\+psycopg2://"):
        Tracker.connect("postgresql+nosuchdriver://me:hunter2@db/x", "unit")


def test_a_run_whose_params_cannot_be_written_is_ended(tracker, monkeypatch):
    real = MlflowClient.log_batch

    def refuse_params(self, run_id, **kwargs):
        if kwargs.get("params"):
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(self, run_id, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", refuse_params)
    with pytest.raises(TrackingError, match="logging trial-0's params failed: .*database is locked"):
        tracker.start_trial(0, {"factors": 8}, "s")
    (run,) = tracker.client.search_runs([tracker.experiment_id], "tags.`optuna.trial_number` = '0'")
    assert run.info.status == "FAILED" and run.data.tags["optuna.state"] == "FAIL"
    assert "database is locked" in run.data.tags["fail_reason"]


def test_a_run_ends_even_when_its_last_metrics_cannot_be_written(tracker, monkeypatch):
    run = tracker.start_trial(0, {}, "s")
    monkeypatch.setattr(MlflowClient, "log_batch", lambda self, run_id, **kw: (_ for _ in ()).throw(
        MlflowException("the store refuses")))
    run.log(best_valid_rmse=0.5)
    with pytest.raises(TrackingError, match="the store refuses"):
        run.end("FINISHED")
    assert tracker.client.get_run(run.run_id).info.status == "FINISHED"


def test_a_store_that_fails_is_not_a_lost_parent(tracker, monkeypatch):
    def locked(self, run_id, **kwargs):
        raise MlflowException("database is locked", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(MlflowClient, "update_run", locked)
    with pytest.raises(TrackingError, match="reopening the parent run .* failed: database is locked"):
        tracker.reopen_parent(tracker.parent_id, {})  # False would make the study a second parent run
    monkeypatch.undo()
    assert not tracker.reopen_parent("0" * 32, {})  # a run the store does not have: lost


@pytest.mark.parametrize("name", ["bob's model", 'the "best" model'])
def test_a_name_with_quotes_is_registered_and_found_again(tracker, tmp_path, name):
    uri = tracker.log_model(_model_folder(tmp_path), KEY)
    assert tracker.register(uri, name, 0.9, "a", KEY) == ("1", "champion")
    assert tracker.register(uri, name, 0.9, "a", KEY) == ("1", "champion")  # found, not registered twice
    assert [str(v.version) for v in tracker.client.search_model_versions(f"name = {filter_literal(name)}")] == ["1"]


def test_filter_literal_quotes_what_mlflow_can_read():
    assert filter_literal("mf") == "'mf'" and filter_literal("bob's") == '"bob\'s"' and filter_literal('a "b"') == "'a \"b\"'"
    with pytest.raises(ValueError, match="both"):
        filter_literal("bob's \"x\"")


def test_a_failed_registration_leaves_no_empty_registered_model(tracker, monkeypatch, tmp_path):
    def refuse(self, *args, **kwargs):
        raise MlflowException("the store refuses")

    uri = tracker.log_model(_model_folder(tmp_path), KEY)
    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "create_model_version", refuse)
        with pytest.raises(TrackingError, match="the store refuses"):
            tracker.register(uri, "mf", 0.9, "a", KEY)
    assert tracker.client.search_registered_models() == []
    assert tracker.register(uri, "mf", 0.9, "a", KEY) == ("1", "champion")  # a rerun registers it
    other = {**KEY, "optuna.best_trial": "4"}
    with monkeypatch.context() as patch:  # a model that holds versions is never deleted
        patch.setattr(MlflowClient, "create_model_version", refuse)
        with pytest.raises(TrackingError):
            tracker.register(tracker.log_model(_model_folder(tmp_path, "m4"), other), "mf", 0.8, "a", other)
    assert [m.name for m in tracker.client.search_registered_models()] == ["mf"]
