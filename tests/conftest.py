"""Shared fixtures and helpers. pytest puts this folder on sys.path (rootdir-relative "prepend"
imports, no __init__.py), so module-scoped fixtures elsewhere take the helpers with
`from conftest import Workspace, free_port, wait_until_up`."""

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from pipeline import ingest
from pipeline.split import split


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Downloads and caches go to a temporary folder, never ~/.cache."""
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def small_ratings():
    """600 users x 300 items, 30k ratings, rank 4, noise 0.25."""
    return ingest.synthetic(600, 300, 30_000, rank=4, noise=0.25, seed=1)


@pytest.fixture(scope="session")
def small_split(small_ratings):
    return split(small_ratings, seed=0)


@pytest.fixture(scope="session")
def ml100k():
    return ingest.load("ml-100k")


@pytest.fixture
def cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return torch.device("cuda")


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """One empty MLflow SQLite database, its schema made once (seconds; a copy costs nothing)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_store(_empty_mlflow_db, tmp_path, monkeypatch) -> str:
    """This test's own MLflow store, `sqlite:///{tmp_path}/mlflow.db`; the working directory is
    tmp_path, so the artifacts of its experiments (./mlruns) land there too, never in the repo."""
    shutil.copy(_empty_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def mlflow_globals(monkeypatch):
    """What `tracking.configure_mlflow` sets process-wide (environment, MLflow's URIs, its
    logger's level), put back after the test."""
    import logging

    import mlflow

    for key in ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_TRACKING_URI",
                "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    level = logging.getLogger("mlflow").level
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    logging.getLogger("mlflow").setLevel(level)


class Workspace:
    """A folder with its own ratings file, Optuna journal and MLflow database."""

    def __init__(self, root: Path, seed: int = 3) -> None:
        self.root = root
        self.data = root / "ratings.csv"
        ingest.synthetic(300, 200, 15_000, rank=4, noise=0.3, seed=seed).frame.to_csv(self.data, index=False)
        self.uri = f"sqlite:///{root / 'mlflow.db'}"

    @property
    def client(self):  # lazily: a client creates the database
        from mlflow import MlflowClient

        return MlflowClient(self.uri, self.uri)

    def argv(self, *extra: str, config: str | Path = "quick") -> list[str]:
        return ["--config", str(config), "--dataset", str(self.data), "--storage", str(self.root / "optuna.journal"),
                "--tracking-uri", self.uri, "--quiet", *extra]

    def search(self, *extra: str, config: str | Path = "quick") -> int:
        from pipeline import search

        return search.main(self.argv(*extra, config=config))

    def runs(self):
        exp = self.client.get_experiment_by_name("pipeline")
        return self.client.search_runs([exp.experiment_id], max_results=1000) if exp else []

    def parents(self):
        return [r for r in self.runs() if "mlflow.parentRunId" not in r.data.tags]


def free_port() -> int:
    """A loopback TCP port nobody listens on now (another process may take it before we do)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll `url` until it answers; fail the test if `server` exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                answer.read()
            return
        except OSError:
            assert server.poll() is None, f"{url}: the server exited with {server.returncode}"
            assert time.monotonic() < deadline, f"{url}: no answer after {timeout:.0f} s"
            time.sleep(0.5)


def interrupt_at(monkeypatch, number: int, epoch: int) -> None:
    """Ctrl-C inside the search: trial `number`'s reporter raises KeyboardInterrupt at `epoch`
    (every other epoch of every trial is reported as usual), alone or stacked."""
    from pipeline.search import objective

    reporter = objective.reporter

    def interrupting(trial, run, prunes=True):
        report = reporter(trial, run, prunes)

        def on_epoch(at, train_mse, valid_rmse):
            if trial.number == number and at == epoch:
                raise KeyboardInterrupt
            return report(at, train_mse, valid_rmse)

        return on_epoch

    monkeypatch.setattr(objective, "reporter", interrupting)  # Objective.fit reports through it
