"""Many workers on one study: PostgreSQL storage, an MLflow tracking server, the journal with
--workers, and their faults (a killed worker, Ctrl-C, a server that goes away for a while).

Each test creates and drops its own PostgreSQL databases on 127.0.0.1:5432."""

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from conftest import free_port, wait_until_up
from pipeline import ingest
from pipeline.space import SEARCH_SPACES

pytestmark = pytest.mark.slow
psycopg2 = pytest.importorskip("psycopg2")
PG = dict(host="127.0.0.1", port=5432, user="postgres", dbname="test")


def _admin(sql: str) -> None:
    connection = psycopg2.connect(**PG)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql)
    connection.close()


@pytest.fixture
def pg_database():
    """A factory of fresh databases, dropped after the test."""
    try:
        psycopg2.connect(**PG).close()
    except psycopg2.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 ({exc})")
    made = []

    def make() -> str:
        name = f"pipeline_test_{uuid.uuid4().hex[:10]}"
        _admin(f"CREATE DATABASE {name}")
        made.append(name)
        return f"postgresql://postgres@127.0.0.1:5432/{name}"

    yield make
    for name in made:
        _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        _admin(f"DROP DATABASE IF EXISTS {name}")


class Study:
    """A ratings file, a search space and the commands that run workers on them."""

    def __init__(self, root: Path, storage: str, tracking_uri: str, cap: int, epochs: int = 6, batch: int = 256,
                 optimizer: str | None = None):
        self.root, self.storage, self.tracking_uri, self.cap = root, storage, tracking_uri, cap
        self.data = root / "ratings.csv"
        ingest.synthetic(300, 200, 15_000, rank=4, noise=0.3, seed=4).frame.to_csv(self.data, index=False)
        raw = yaml.safe_load((SEARCH_SPACES / "quick.yaml").read_text())
        raw.update(epochs=epochs, pruner={"type": "none"}, trials=cap)
        raw["params"]["batch_size"] = {"type": "fixed", "value": batch}
        if optimizer:  # "adam" (the dense tensor path) makes slow trials, for signals mid-trial
            raw["params"]["optimizer"] = {"type": "fixed", "value": optimizer}
            raw["params"]["lr"] = {"type": "fixed", "value": 0.002}
        self.space = root / "space.yaml"
        self.space.write_text(yaml.safe_dump(raw))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "pipeline.search", "--config", str(self.space), "--dataset", str(self.data),
                "--storage", self.storage, "--tracking-uri", self.tracking_uri, "--study-name", "shared",
                "--heartbeat", "1", "--grace", "4", *extra]

    def start(self, *extra: str) -> subprocess.Popen:
        # Its own process group, as a command started from a terminal: Ctrl-C reaches all its workers.
        return subprocess.Popen(self.command(*extra), cwd=self.root, env=self.env, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    def run(self, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*extra), cwd=self.root, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def optuna_storage(self) -> str | optuna.storages.BaseStorage:
        return self.storage if "://" in self.storage else optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(self.storage))

    def optuna(self) -> optuna.Study:
        return optuna.load_study(study_name="shared", storage=self.optuna_storage())

    def mlflow(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri, self.tracking_uri)

    def check(self, parents: int = 1) -> list:
        """The guarantees every scenario ends with; returns the child runs."""
        # the once-only steps (init, parent, finish, retries) leave no study of their own behind
        assert optuna.get_all_study_names(self.optuna_storage()) == ["shared"]
        study = self.optuna()
        finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                           optuna.trial.TrialState.PRUNED)]
        assert len(finished) == self.cap
        numbers = [t.number for t in study.trials]
        assert len(numbers) == len(set(numbers))
        assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        client = self.mlflow()
        experiment = client.get_experiment_by_name("pipeline")
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        top = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(top) == parents == 1 and top[0].info.status == "FINISHED"
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == top[0].info.run_id]
        assert len(children) == len(runs) - 1
        assert not [r for r in runs if r.info.status == "RUNNING"]
        done = [r for r in children if r.data.tags.get("optuna.state") in ("COMPLETE", "PRUNED")]
        assert sorted(int(r.data.tags["optuna.trial_number"]) for r in done) == sorted(t.number for t in finished)
        versions = client.search_model_versions("name='mf-movielens-quick'")
        assert len(versions) == 1
        return children


def _sqlite(root: Path) -> str:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()  # create the database once, before any worker starts
    return uri


def _optuna_url(pg_database) -> str:
    return pg_database().replace("postgresql://", "postgresql+psycopg2://")


def test_two_workers_share_one_capped_study(tmp_path, pg_database):
    s = Study(tmp_path, _optuna_url(pg_database), _sqlite(tmp_path), cap=12)
    workers = [s.start("--quiet") for _ in range(2)]
    for w in workers:
        assert w.wait(300) == 0, w.stderr.read()
    s.check()


def test_a_killed_worker_is_failed_retried_and_its_run_closed(tmp_path, pg_database):
    s = Study(tmp_path, _optuna_url(pg_database), _sqlite(tmp_path), cap=8, epochs=60, batch=64, optimizer="adam")
    victim, survivor = s.start(), s.start("--quiet")
    for line in victim.stderr:  # after its first trial ends, the victim is in the middle of its next
        if "trials |" in line:
            time.sleep(1.0)
            victim.kill()
            break
    victim.wait(30)
    assert survivor.wait(300) == 0, survivor.stderr.read()
    children = s.check()
    failed = [t for t in s.optuna().trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed, "the killed worker's trial should be failed by the heartbeat"
    retried = {t.system_attrs.get("failed_trial") for t in s.optuna().trials}
    assert all(t.number in retried for t in failed)
    for t in failed:
        run = next(r for r in children if r.info.run_id == t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED" and "worker died" in run.data.tags["fail_reason"]


def test_a_killed_worker_s_stack_is_failed_and_retried(tmp_path, pg_database):
    """Trials asked together and trained as one stack beat while they run: killed, they go stale
    together, and the next worker fails and retries them."""
    s = Study(tmp_path, _optuna_url(pg_database), _sqlite(tmp_path), cap=6, epochs=300, batch=64,
              optimizer="sparse_sgd")
    victim = s.start("--stack", "4")  # asks trials 0-3: 0 (d2l, Adam) alone, then 1-3 as one stack (~12 s)
    for line in victim.stderr:
        if "trials |" in line:  # trial 0 is told: the stack is training
            time.sleep(1.0)
            victim.kill()
            break
    victim.wait(30)
    survivor = s.run("--quiet")  # one trial at a time: the compiled loop
    assert survivor.returncode == 0, survivor.stderr
    s.check()
    trials = s.optuna().trials
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [(t.number, t.user_attrs["stack_size"]) for t in failed] == [(1, 3), (2, 3), (3, 3)]
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    assert all(t.number in retried for t in failed)


@pytest.mark.parametrize("storage", ["postgresql", "journal"])
def test_ctrl_c_then_rerun_resumes_to_the_cap(tmp_path, pg_database, storage):
    url = _optuna_url(pg_database) if storage == "postgresql" else str(tmp_path / "optuna.journal")
    s = Study(tmp_path, url, _sqlite(tmp_path), cap=10, epochs=60, batch=64, optimizer="adam")
    workers = ["--workers", "2"] if storage == "journal" else []
    process = s.start(*workers)
    for line in process.stderr:
        if "trials |" in line:
            time.sleep(1.0)
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            break
    assert process.wait(60) == 130
    finished = [t for t in s.optuna().trials if t.state.is_finished()]
    assert 0 < len([t for t in finished if t.state != optuna.trial.TrialState.FAIL]) < s.cap
    rerun = s.run("--quiet", *workers)
    assert rerun.returncode == 0, rerun.stderr
    s.check()


def test_journal_with_two_local_workers(tmp_path):
    s = Study(tmp_path, str(tmp_path / "optuna.journal"), _sqlite(tmp_path), cap=12)
    result = s.run("--quiet", "--workers", "2")
    assert result.returncode == 0, result.stderr
    s.check()


def _start_server(backend: str, artifacts: Path, port: int, env: dict) -> subprocess.Popen:
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--artifacts-destination",
         str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_until_up(f"http://127.0.0.1:{port}/health", server)
    return server


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(30)


def test_a_tracking_server_that_goes_away_for_a_while(tmp_path, pg_database):
    port = free_port()
    backend, artifacts = _optuna_url(pg_database), tmp_path / "server-artifacts"  # SQLAlchemy 2.1 defaults to psycopg 3
    s = Study(tmp_path, _optuna_url(pg_database), f"http://127.0.0.1:{port}", cap=10, epochs=30, batch=64,
              optimizer="adam")
    server = _start_server(backend, artifacts, port, s.env)
    try:
        process = s.start("--workers", "2")
        for line in process.stderr:
            if "trials |" in line:
                _stop(server)  # down for a few seconds, in the middle of the study
                time.sleep(4)
                server = _start_server(backend, artifacts, port, s.env)
                break
        rest = process.stderr.read()
        assert process.wait(600) == 0, rest
        s.check()
        # the artifacts went through the server: the workers never saw the folder
        client = s.mlflow()
        version = client.get_model_version_by_alias("mf-movielens-quick", "champion")
        assert any(artifacts.rglob("MLmodel")) and version.source
        parent = [r for r in client.search_runs([client.get_experiment_by_name("pipeline").experiment_id])
                  if "mlflow.parentRunId" not in r.data.tags][0]
        assert {"search_space.yaml", "trials.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    finally:
        _stop(server)
