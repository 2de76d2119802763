"""Everything that talks to MLflow: the study's parent run, one child run per trial, artifacts,
the logged model and the registry.

Runs are addressed by id through `MlflowClient` (never the fluent active-run stack, which is
thread-local and loses children under `n_jobs` or several workers). Learning curves are buffered
and written with one `log_batch` per flush: a call per metric costs ~2.5 ms on SQLite, which is
more than an epoch of ml-100k.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from pipeline.urls import masked

__all__ = ["TrackingError", "Tracker", "TrialRun", "configure_mlflow", "reported", "resolve_tracking_uri"]

_FLUSH_SECONDS = 5.0  # a running trial's curve appears in `mlflow ui` at most this late


class TrackingError(RuntimeError):
    """The tracking server or database cannot be used."""


def resolve_tracking_uri(flag: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's own default (sqlite:///mlflow.db)."""
    if flag:
        return flag
    return os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def configure_mlflow(tracking_uri: str | None) -> None:
    """The one MLflow set-up of every command: quiet logging, no download bars, bounded HTTP retries
    (~30 s: 1+2+4+8+16, then the trial fails with the reason, instead of MLflow's minutes), and the
    fluent API (log_model, download_artifacts) pointed at `tracking_uri` for tracking and registry."""
    # MLflow's INFO chatter (table creation, "Created version"): our own summary says what happened.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    for key, value in (("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5"),
                       ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
        os.environ.setdefault(key, value)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class TrialRun:
    """One trial's child run. `epoch` buffers; `end` flushes and closes the run."""

    client: MlflowClient
    run_id: str
    _pending: list[Metric] = field(default_factory=list)
    _last_flush: float = field(default_factory=time.monotonic)

    def epoch(self, epoch: int, **values: float) -> None:
        now = _now_ms()
        self._pending.extend(Metric(key, float(v), now, epoch) for key, v in values.items())
        if time.monotonic() - self._last_flush > _FLUSH_SECONDS:
            self.flush()

    def log(self, **values: float) -> None:
        """Final metrics (step 0), written with the run's end."""
        now = _now_ms()
        self._pending.extend(Metric(key, float(v), now, 0) for key, v in values.items())

    def flush(self) -> None:
        if self._pending:
            with reported(self.client.tracking_uri):
                self.client.log_batch(self.run_id, metrics=self._pending)
            self._pending = []
        self._last_flush = time.monotonic()

    def end(self, status: str, tags: dict[str, str] | None = None) -> None:
        """status: FINISHED (complete), KILLED (pruned or interrupted), FAILED."""
        tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        with reported(self.client.tracking_uri):
            self.client.log_batch(self.run_id, metrics=self._pending, tags=tags)
            self._pending = []
            self.client.set_terminated(self.run_id, status)


@contextmanager
def reported(tracking_uri: str, doing: str = ""):
    """MLflow failures (after the client's own retries) as one TrackingError naming the store and
    what was being done; never a raw MlflowException traceback."""
    tracking_uri = masked(tracking_uri)
    try:
        yield
    except MlflowException as exc:
        raise TrackingError(f"MLflow at {tracking_uri}{': ' + doing if doing else ''} failed: "
                            f"{masked(exc.message[:300])}") from None
    except OSError as exc:  # an artifact store that cannot be written (a read-only folder, a full disk)
        raise TrackingError(f"MLflow at {tracking_uri}{': ' + doing if doing else ''} failed: {exc}") from None


class Tracker:
    """One study's view of MLflow: an experiment and its parent run."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.experiment_name = experiment
        self.experiment_id: str | None = None
        self.parent_id: str | None = None

    @classmethod
    def connect(cls, tracking_uri: str, experiment: str, wait: float = 0.0) -> Tracker:
        """Check the server (or create the database: once, before any worker starts, because
        concurrent first-time migrations race) and get or create the experiment. `wait`: seconds
        to keep trying a server that does not answer (a worker joining during an outage)."""
        configure_mlflow(tracking_uri)
        if tracking_uri.startswith(("http://", "https://")):
            _wait_for_server(tracking_uri, wait)
        with _sqlite_lock(tracking_uri), reported(tracking_uri, f"opening experiment {experiment!r}"):
            tracker = cls(tracking_uri, experiment)  # the client creates (or migrates) the store
            tracker.experiment_id = tracker._experiment_id(experiment)
        return tracker

    def _experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException as exc:  # another worker created it first
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return self.client.get_experiment_by_name(name).experiment_id

    # --- the parent run -------------------------------------------------------------------

    def _reported(self, doing: str):
        return reported(self.tracking_uri, doing)

    def create_parent(self, run_name: str, tags: dict[str, str]) -> str:
        with self._reported("creating the study's parent run"):
            self.parent_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id
        return self.parent_id

    def reopen_parent(self, run_id: str, tags: dict[str, str]) -> bool:
        """Attach to an existing parent run and mark it RUNNING; False if the store lost it."""
        try:
            self.client.update_run(run_id, status="RUNNING")
        except MlflowException:
            return False
        self.parent_id = run_id
        with self._reported("tagging the parent run"):
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return True

    def share_trials_view(self, study_name: str, params: list[str]) -> None:
        """Save the study's comparison view in the experiment, as `mlflow ui`'s "share view" does
        (tag mlflow.sharedViewState.<key>: plain JSON of the runs table's state): the study's
        trials only, best valid RMSE first, with the state, that metric and `params` as columns.
        Also marks the experiment as model training (what MLflow reads for its default view)."""
        state = {
            "searchFilter": f"tags.`mlflow.parentRunId` = '{self.parent_id}'",
            "orderByKey": "metrics.`best_valid_rmse`", "orderByAsc": True,
            "selectedColumns": ["metrics.`best_valid_rmse`", "tags.`optuna.state`", "metrics.`best_epoch`",
                                *(f"params.`{p}`" for p in params), "metrics.`train_seconds`"],
        }
        with self._reported("saving the trials' comparison view"):
            self.client.set_experiment_tag(self.experiment_id, "mlflow.experimentKind", "custom_model_development")
            self.client.set_experiment_tag(self.experiment_id, f"mlflow.sharedViewState.{_view_key(study_name)}",
                                           json.dumps(state))

    def trials_view_link(self, study_name: str) -> str:
        """The `mlflow ui` address (after the server's root) of `share_trials_view`'s view."""
        return (f"#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
                f"&viewStateShareKey={_view_key(study_name)}")

    def close_parent(self, status: str) -> None:
        if self.parent_id is not None:
            with self._reported(f"closing the parent run as {status}"):
                self.client.set_terminated(self.parent_id, status)

    def log_parent(self, params: dict | None = None, metrics: dict[str, float] | None = None,
                   tags: dict[str, str] | None = None) -> None:
        now = _now_ms()
        with self._reported("logging the study's results"):
            self.client.log_batch(
                self.parent_id,
                metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                params=[Param(k, str(v)) for k, v in (params or {}).items()],
                tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
            )

    def log_text(self, text: str, artifact_file: str) -> None:
        with self._reported(f"writing {artifact_file}"):
            self.client.log_text(self.parent_id, text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        with self._reported(f"writing {artifact_file}"):
            self.client.log_figure(self.parent_id, figure, artifact_file)

    def log_dataset(self, frame, name: str, digest: str, source: str, context: str) -> None:
        """One `mlflow.data` input of the parent run (schema, row count and our digest)."""
        with warnings.catch_warnings():  # schema-inference hints about int columns: not actionable here
            warnings.simplefilter("ignore", UserWarning)
            entity = mlflow.data.from_pandas(frame, source=source or None, name=name, digest=digest[:36])._to_mlflow_entity()
        with self._reported(f"logging dataset {name}"):
            self.client.log_inputs(self.parent_id, [DatasetInput(entity, [InputTag("mlflow.data.context", context)])])

    # --- children ---------------------------------------------------------------------------

    def start_trial(self, trial_number: int, params: dict, study_name: str) -> TrialRun:
        with self._reported(f"creating trial-{trial_number}'s run"):
            run = self.client.create_run(
                self.experiment_id, run_name=f"trial-{trial_number}",
                tags={"mlflow.parentRunId": self.parent_id, "optuna.trial_number": str(trial_number),
                      "optuna.study_name": study_name, "optuna.state": "RUNNING"},
            )
            self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return TrialRun(self.client, run.info.run_id)

    def fail_run(self, run_id: str, reason: str) -> None:
        """Close a run another process left RUNNING (its worker died)."""
        with self._reported(f"closing run {run_id}"):
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.log_batch(run_id, tags=[RunTag("optuna.state", "FAIL"), RunTag("fail_reason", reason)])
                self.client.set_terminated(run_id, "FAILED")

    def running_children(self) -> list:
        with self._reported("listing the study's running trials"):
            return self.client.search_runs(
            [self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}' and attributes.status = 'RUNNING'",
            max_results=50_000)

    # --- model and registry -----------------------------------------------------------------

    def log_model(self, folder, key: dict[str, str]) -> str:
        """Log the MLflow model folder `folder` (see bundle.save_model) as a model of the parent
        run, tagged `key`; returns its URI. Idempotent per `key` (e.g. study and best trial): a
        READY model an earlier, interrupted finish logged under it is reused, and one it left
        half-logged is deleted."""
        with self._reported("looking for an earlier copy of the model"):
            uri = self._reuse_logged_model(key)
        if uri is not None:
            return uri
        with self._reported("logging the model"):
            model = mlflow.initialize_logged_model(name="model", source_run_id=self.parent_id, tags=key,
                                                   experiment_id=self.experiment_id)
            self.client.log_model_artifacts(model.model_id, str(folder))
            mlflow.finalize_logged_model(model.model_id, "READY")
        return f"models:/{model.model_id}"

    def _reuse_logged_model(self, key: dict[str, str]) -> str | None:
        ready = None
        for model in self.client.search_logged_models([self.experiment_id],
                                                      filter_string=f"source_run_id = '{self.parent_id}'"):
            if any(model.tags.get(k) != v for k, v in key.items()):
                continue
            if str(model.status) == "READY" and ready is None:
                ready = model.model_uri
            else:
                self.client.delete_logged_model(model.model_id)
        return ready

    def register(self, model_uri: str, name: str, test_rmse: float, split_fingerprint: str,
                 key: dict[str, str]) -> tuple[str, str]:
        """Register a new version (or find the one an interrupted finish made with the same `key`
        tags); alias `champion` moves to it only when it beats the current champion's test RMSE on
        the same split, else it becomes `challenger`. Returns (version, alias)."""
        with self._reported(f"registering {model_uri} as {name!r}"):
            return self._register(model_uri, name, test_rmse, split_fingerprint, key)

    def _register(self, model_uri, name, test_rmse, split_fingerprint, key) -> tuple[str, str]:
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        rmse = f"{test_rmse:.6f}"  # compared as stored, so a rerun of the same model never "beats" it
        earlier = [v for v in self.client.search_model_versions(f"name = '{name}' and run_id = '{self.parent_id}'")
                   if all(v.tags.get(k) == value for k, value in key.items())]
        version = earlier[0].version if earlier else self.client.create_model_version(
            name, source=model_uri, run_id=self.parent_id, model_id=model_uri.removeprefix("models:/"),
            tags={"test_rmse": rmse, "split_fingerprint": split_fingerprint, **key}).version
        try:
            current = self.client.get_model_version_by_alias(name, "champion")
        except MlflowException:
            current = None
        alias = "champion"
        if current is not None and str(current.version) != str(version):
            same_split = current.tags.get("split_fingerprint") == split_fingerprint
            if not (same_split and float(rmse) < float(current.tags.get("test_rmse", "inf"))):
                alias = "challenger"
        self.client.set_registered_model_alias(name, alias, version)
        return str(version), alias


def _view_key(study_name: str) -> str:
    return "trials-" + hashlib.sha256(study_name.encode()).hexdigest()[:16]


@contextmanager
def _sqlite_lock(tracking_uri: str):
    """For a SQLite store, hold an exclusive lock on its file while MLflow creates or migrates the
    schema: processes starting together otherwise race ("table ... already exists"). Other stores
    (a server, PostgreSQL) serialise this themselves."""
    if not tracking_uri.startswith("sqlite:///") or os.name != "posix":
        yield
        return
    import fcntl

    path = tracking_uri.removeprefix("sqlite:///").split("?")[0]
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # SQLite takes an empty file as a new database
    except OSError as exc:
        raise TrackingError(f"MLflow at {tracking_uri}: cannot create or open {path} ({exc.strerror}); "
                            "run from a writable folder or pass --tracking-uri") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # an flock, independent of SQLite's own fcntl locks
        yield
    finally:
        os.close(fd)  # releases the lock


def _wait_for_server(tracking_uri: str, wait: float) -> None:
    """Check the server answers /health; keep trying for `wait` seconds (a worker joining during a
    short outage), then fail with the server named."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=10) as response:
                response.read()
            return
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise TrackingError(f"cannot reach the MLflow tracking server at {masked(tracking_uri)} ({exc})") from None
            time.sleep(1.0)
