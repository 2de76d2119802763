"""Everything that talks to MLflow about runs: the study's parent run, one child run per trial,
their artifacts; the logged model and the registry through `pipeline.registry`.

Runs are addressed by id through `MlflowClient` (never the fluent active-run stack, which is
thread-local and loses children under `n_jobs` or several workers); a `Tracker` changes nothing
process-wide: `configure_mlflow` does that, once at the start of each command. Learning curves are
buffered and written with one `log_batch` per flush: a call per metric costs ~2.5 ms on SQLite,
more than an epoch of ml-100k.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, field

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from pipeline.registry import Registry
from pipeline.tracking_store import TrackingError, check_store, reported
from pipeline.trials_view import view_link, view_tags

__all__ = ["TrackingError", "Tracker", "TrialRun", "configure_mlflow", "reported"]

_FLUSH_SECONDS = 5.0  # a running trial's curve appears in `mlflow ui` at most this late


def resolve_tracking_uri(flag: str | None) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else MLflow's own default (sqlite:///mlflow.db)."""
    if flag:
        return flag
    return os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def configure_mlflow(tracking_uri: str | None = None) -> str:
    """The one MLflow set-up of a command, called once at its start; returns the resolved URI
    (see `resolve_tracking_uri`). Quiet logging, no download bars, bounded HTTP retries (~30 s:
    1+2+4+8+16, then the trial fails with the reason, instead of MLflow's minutes), and the fluent
    API (`mlflow.pyfunc.load_model` and the like) pointed at the URI for tracking and registry."""
    tracking_uri = resolve_tracking_uri(tracking_uri)
    # MLflow's INFO chatter (table creation, "Created version"): our own summary says what happened.
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # MLflow logs each database error with its traceback, then raises it: `reported` says it once.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    for key, value in (("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5"),
                       ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
        os.environ.setdefault(key, value)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return tracking_uri


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
        """status: FINISHED (complete, or pruned: the `optuna.state` tag says which), KILLED
        (interrupted), FAILED."""
        tags = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        with reported(self.client.tracking_uri, f"ending run {self.run_id}"):
            try:
                self.client.log_batch(self.run_id, metrics=self._pending, tags=tags)
                self._pending = []
            finally:  # a run whose last metrics could not be written still ends
                self.client.set_terminated(self.run_id, status)


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
        """Check the server or database (`tracking_store.check_store`: what cannot heal, such as an
        unknown role, fails at once), create the database (once, before any worker starts, because
        concurrent first-time migrations race) and get or create the experiment. `wait`: seconds
        to keep trying a store that does not answer (a worker joining during an outage).
        Changes nothing process-wide (see `configure_mlflow`)."""
        with check_store(tracking_uri, wait), reported(tracking_uri, f"opening experiment {experiment!r}"):
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
        """Attach to an existing parent run and mark it RUNNING; False if the store lost it or it was
        deleted (in `mlflow ui`); any other failure, such as a locked store, is a TrackingError: not
        a reason for a new parent."""
        with self._reported(f"reopening the parent run {run_id}"):
            try:
                self.client.update_run(run_id, status="RUNNING")
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST" and self.client.get_run(run_id).info.lifecycle_stage != "deleted":
                    raise
                return False
        self.parent_id = run_id
        with self._reported("tagging the parent run"):
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        return True

    def share_trials_view(self, study_name: str, params: list[str],
                          order: tuple[str, bool] = ("best_valid_rmse", True)) -> None:
        """Save the study's comparison view in the experiment (see `pipeline.trials_view`)."""
        with self._reported("saving the trials' comparison view"):
            for key, value in view_tags(study_name, self.parent_id, params, order).items():
                self.client.set_experiment_tag(self.experiment_id, key, value)

    def trials_view_link(self, study_name: str) -> str:
        """The `mlflow ui` address (after the server's root) of `share_trials_view`'s view."""
        return view_link(self.experiment_id, study_name)

    def close_parent(self, status: str) -> None:
        if self.parent_id is not None:
            with self._reported(f"closing the parent run as {status}"):
                self.client.set_terminated(self.parent_id, status)

    def log_parent(self, params: dict | None = None, metrics: dict[str, float] | None = None,
                   tags: dict[str, str] | None = None) -> None:
        now, params, tags = _now_ms(), params or {}, tags or {}
        metrics = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
        with self._reported("logging the study's results"):
            self.client.log_batch(self.parent_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()],
                                  tags=[RunTag(k, str(v)) for k, v in tags.items()])

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
        """The trial's child run with its params. A run created but not completed is ended FAILED
        (where the store lets us; else the end-of-search sweep `close_orphan_runs` closes it)."""
        with self._reported(f"creating trial-{trial_number}'s run"):
            run = self.client.create_run(
                self.experiment_id, run_name=f"trial-{trial_number}",
                tags={"mlflow.parentRunId": self.parent_id, "optuna.trial_number": str(trial_number),
                      "optuna.study_name": study_name, "optuna.state": "RUNNING"},
            )
        try:
            with self._reported(f"logging trial-{trial_number}'s params"):
                self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        except TrackingError as exc:
            with contextlib.suppress(Exception):  # the store that just failed may fail again
                self.client.set_terminated(run.info.run_id, "FAILED")
            with contextlib.suppress(Exception):
                self.client.log_batch(run.info.run_id,
                                      tags=[RunTag("optuna.state", "FAIL"), RunTag("fail_reason", str(exc))])
            raise
        return TrialRun(self.client, run.info.run_id)

    def fail_run(self, run_id: str, reason: str) -> None:
        """Close a run another process left RUNNING (its worker died)."""
        with self._reported(f"closing run {run_id}"):
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.log_batch(run_id, tags=[RunTag("optuna.state", "FAIL"), RunTag("fail_reason", reason)])
                self.client.set_terminated(run_id, "FAILED")

    def running_children(self) -> list:
        with self._reported("listing the study's running trials"):
            return self.client.search_runs([self.experiment_id], max_results=50_000, filter_string=(
                f"tags.mlflow.parentRunId = '{self.parent_id}' and attributes.status = 'RUNNING'"))

    # --- model and registry -----------------------------------------------------------------

    def _registry(self) -> Registry:
        return Registry(self.client, self.experiment_id, self.parent_id)

    def log_model(self, folder, key: dict[str, str], name: str = "model",
                  metrics: dict[str, float] | None = None) -> str:
        """Log the MLflow model folder `folder` (see bundle.save_model) as the model `name` of the
        parent run, tagged `key`, and link it (`link_model`, with `metrics`); returns its URI.
        Idempotent per `key` (e.g. study and best trial): a READY model an earlier, interrupted
        finish logged is reused; otherwise the copies it left half-logged are discarded (a step of
        its own) and the model is logged."""
        registry = self._registry()
        with self._reported("looking for an earlier copy of the model"):
            uri = registry.find_logged_model(key)
        if uri is None:
            with self._reported("discarding a half-logged copy of the model"):
                registry.discard_unfinished_models(key)
            with self._reported("logging the model"):
                uri = registry.log_model(folder, key, name)
        self.link_model(uri, metrics or {})
        return uri

    def link_model(self, model_uri: str, metrics: dict[str, float]) -> None:
        """MLflow 3's links of a logged model `models:/<id>`: the parent run's output (its "Logged
        models") and `metrics` as the model's (the Models tab's and its registered versions'
        columns), logged to the parent run with the model's id, so the run has them too, once.
        Once each: a retried finish that reuses the model adds neither again."""
        model_id = model_uri.removeprefix("models:/")
        with self._reported("linking the model to the study's run"):
            outputs = self.client.get_run(self.parent_id).outputs
            if model_id not in {o.model_id for o in (outputs.model_outputs if outputs else [])}:
                self.client.log_outputs(self.parent_id, [LoggedModelOutput(model_id, step=0)])
            if metrics and not self.client.get_logged_model(model_id).metrics:
                now = _now_ms()
                self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0, model_id=model_id)
                                                               for k, v in metrics.items()])

    def register(self, model_uri: str, name: str, test_rmse: float, split_fingerprint: str,
                 key: dict[str, str], scores: dict[str, float] | None = None) -> tuple[str, str]:
        """Register a new version (or find the one an interrupted finish made with the same `key`
        tags); alias `champion` or `challenger` by `registry.choose_alias`; `scores` (the other test
        scores) go in its description. Returns (version, alias)."""
        with self._reported(f"registering {model_uri} as {name!r}"):
            return self._registry().register(model_uri, name, test_rmse, split_fingerprint, key, scores)
