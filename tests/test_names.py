"""The names a study writes (study, experiment, registered model) are checked before any work,
against the stores' own rules and column lengths: a name the stores cannot keep is one clear error
(exit 2, nothing created), never a traceback or an empty study left behind (issue 18)."""

import shutil
import uuid

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from conftest import Workspace
from pipeline import search
from pipeline.search import options
from pipeline.search.lease import Lease
from pipeline.search.options import MAX_STUDY_NAME, SearchError, SearchOptions

PG = dict(host="127.0.0.1", port=5432, user="postgres", dbname="test")

NAMES = ["mf-movielens", "bob's model", 'the "best" one', "a b", " lead", "x.y", "...", "..x", ".", "..", "", "  ",
         "team/model", "a:b", "./a", "a/..", "über", "tab\tname", "%20", "back\\slash", "-", "a.", ".a"]


@pytest.mark.parametrize("name", NAMES)
def test_a_registered_model_name_is_refused_exactly_where_mlflow_refuses_it(name):
    from mlflow.utils.validation import _validate_model_name  # private: restated in options, held together here

    try:
        _validate_model_name(name)
        mlflow_accepts = True
    except MlflowException:
        mlflow_accepts = False
    try:
        SearchOptions(register_as=name)
        we_accept = True
    except SearchError as error:
        assert str(error).startswith(f"--register-as {name!r}: expected ")
        we_accept = False
    assert we_accept == mlflow_accepts


def test_a_name_mlflows_filters_cannot_quote_is_refused():
    with pytest.raises(SearchError, match="without both ' and \""):
        SearchOptions(register_as="bob's \"best\"")
    with pytest.raises(SearchError, match="not ending in a backslash"):
        SearchOptions(register_as="models\\")  # it would escape the filter's closing quote


def test_the_bounds_are_the_stores_columns():
    from mlflow.store.model_registry.dbmodels.models import SqlRegisteredModel
    from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlRun
    from optuna.storages._rdb.models import StudyModel

    assert SqlRun.name.type.length == options.MLFLOW_RUN_NAME  # the parent run is named after the study
    assert SqlExperiment.name.type.length == options.MLFLOW_NAME == SqlRegisteredModel.name.type.length
    assert StudyModel.study_name.type.length == options.OPTUNA_STUDY_NAME
    # the longest marker study a lease makes (lease.py) still fits Optuna's column
    longest = Lease(None, "s" * MAX_STUDY_NAME, f"mlflow-parent-after-{uuid.uuid4().hex}", 1.0).marker(10**10 - 1)
    assert len(longest) - MAX_STUDY_NAME <= options.MARKER_SUFFIX
    assert len(longest) <= options.OPTUNA_STUDY_NAME


def test_a_default_study_name_too_long_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ws = Workspace(tmp_path)
    long_file = tmp_path / ("r" * 246 + ".csv")  # the study: <file's stem>-quick, 252 characters
    shutil.move(ws.data, long_file)
    ws.data = long_file
    assert ws.search() == 2
    err = capsys.readouterr().err
    assert "study name (<dataset>-<space>; pass a shorter --study-name) 'rrrr" in err
    assert f"expected at most {MAX_STUDY_NAME} characters" in err and "Traceback" not in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "optuna.journal").exists()


# --- on PostgreSQL, where the columns' lengths are enforced -----------------------------------------


@pytest.fixture
def pg_database():
    """A factory of fresh PostgreSQL databases (dropped after the test), as SQLAlchemy URLs."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        psycopg2.connect(**PG).close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 ({exc})")
    made = []

    def admin(sql: str) -> None:
        connection = psycopg2.connect(**PG)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql)
        connection.close()

    def make() -> str:
        made.append(f"pipeline_names_{uuid.uuid4().hex[:10]}")
        admin(f"CREATE DATABASE {made[-1]}")
        return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{made[-1]}"

    yield make
    for name in made:
        admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        admin(f"DROP DATABASE IF EXISTS {name}")


@pytest.mark.slow
@pytest.mark.parametrize("length", [300, 500])
def test_a_study_name_too_long_for_the_stores_exits_2_and_leaves_no_study(tmp_path, monkeypatch, capsys, pg_database,
                                                                          length):
    pg_url = pg_database()
    monkeypatch.chdir(tmp_path)
    ws = Workspace(tmp_path)
    argv = ws.argv("--n-trials", "1", "--study-name", "s" * length, "--heartbeat", "1", "--grace", "4")
    argv[argv.index("--storage") + 1] = pg_url
    assert search.main(argv) == 2
    err = capsys.readouterr().err
    assert "--study-name 'ssss" in err and f"({length} characters): expected at most {MAX_STUDY_NAME}" in err
    assert "Traceback" not in err
    assert optuna.get_all_study_names(pg_url) == []  # no empty study behind
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_the_longest_study_name_runs_on_postgresql(tmp_path, monkeypatch, pg_database):
    """The bound is not too tight: a study of MAX_STUDY_NAME characters, with its lease markers and
    its parent run named after it, on PostgreSQL for both Optuna and MLflow."""
    monkeypatch.chdir(tmp_path)
    ws = Workspace(tmp_path)
    name = "s" * MAX_STUDY_NAME
    argv = ws.argv("--n-trials", "1", "--study-name", name, "--heartbeat", "1", "--grace", "4")
    storage, tracking = pg_database(), pg_database()
    argv[argv.index("--storage") + 1] = storage
    argv[argv.index("--tracking-uri") + 1] = tracking
    assert search.main(argv) == 0
    assert optuna.get_all_study_names(storage) == [name]  # and no marker study left
    client = MlflowClient(tracking, tracking)
    (parent,) = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id],
                                   "attributes.run_name = '" + name + "'")
    assert parent.info.status == "FINISHED"


@pytest.mark.parametrize("driver", ["postgresql", "postgresql+psycopg2"])
def test_one_database_for_optuna_and_mlflow_is_refused_before_any_work(tmp_path, monkeypatch, capsys, pg_database,
                                                                        driver):
    """Both keep their schema's version in the table alembic_version: MLflow cannot migrate Optuna's."""
    monkeypatch.chdir(tmp_path)
    ws = Workspace(tmp_path)
    storage = pg_database()
    argv = ws.argv("--heartbeat", "1", "--grace", "4")
    argv[argv.index("--storage") + 1] = storage
    argv[argv.index("--tracking-uri") + 1] = storage.replace("postgresql+psycopg2", driver)
    assert search.main(argv) == 2
    err = capsys.readouterr().err
    assert "--tracking-uri postgresql" in err and "expected another database than --storage's" in err
    assert "Traceback" not in err
    import sqlalchemy

    with sqlalchemy.create_engine(storage).connect() as connection:  # nothing created in it
        assert sqlalchemy.inspect(connection).get_table_names() == []
