"""The study's logged model and the model registry, through one `MlflowClient`, and the
promotion rule (`choose_alias`, a pure function).

Errors are MLflow's own (`MlflowException`): `tracking.Tracker`, the only caller in the package,
reports them as TrackingError. Looking a model up never changes anything; discarding half-logged
copies is its own step (`discard_unfinished_models`); a registration that fails leaves no empty
registered model behind. Values in search filters go through `filter_literal`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

__all__ = ["Registry", "Standing", "choose_alias", "filter_literal"]

_TITLES = {"test_mae": "MAE", "ndcg_at_10": "NDCG@10", "recall_at_10": "Recall@10", "map_at_10": "MAP@10"}


@dataclass(frozen=True)
class Standing:
    """A registered version as the promotion rule sees it: its test RMSE as stored (6 decimals, so
    a rerun of the same model never beats itself; inf when unknown) and its split's fingerprint."""

    version: str
    test_rmse: float
    split_fingerprint: str | None

    @classmethod
    def of(cls, version) -> Standing:
        """From an MLflow `ModelVersion`'s tags."""
        try:
            rmse = float(version.tags.get("test_rmse", "inf"))
        except ValueError:
            rmse = float("inf")
        return cls(str(version.version), rmse, version.tags.get("split_fingerprint"))


def choose_alias(current: Standing | None, candidate: Standing) -> str:
    """The alias a new (or re-found) version takes: `champion` when there is none yet, when the
    candidate is the champion already, or when it beats the champion's test RMSE on the same
    split fingerprint; otherwise `challenger` (another split's RMSE is not comparable)."""
    if current is None or current.version == candidate.version:
        return "champion"
    same_split = current.split_fingerprint == candidate.split_fingerprint
    return "champion" if same_split and candidate.test_rmse < current.test_rmse else "challenger"


@dataclass(frozen=True)
class Registry:
    """The models of one run (the study's parent) and the versions registered from it. `key`:
    tags that name one model (e.g. study and best trial), so that a retried finish finds its own."""

    client: MlflowClient
    experiment_id: str
    run_id: str

    def _models(self, key: dict[str, str]) -> list:
        found = self.client.search_logged_models([self.experiment_id],
                                                 filter_string=f"source_run_id = {filter_literal(self.run_id)}")
        return [m for m in found if all(m.tags.get(k) == v for k, v in key.items())]

    def find_logged_model(self, key: dict[str, str]) -> str | None:
        """The URI of a READY model of the run tagged `key`, or None. Only looks."""
        return next((m.model_uri for m in self._models(key) if str(m.status) == "READY"), None)

    def discard_unfinished_models(self, key: dict[str, str]) -> int:
        """Delete the run's models tagged `key` that never became READY (a finish killed while
        logging); returns how many."""
        unfinished = [m for m in self._models(key) if str(m.status) != "READY"]
        for model in unfinished:
            self.client.delete_logged_model(model.model_id)
        return len(unfinished)

    def log_model(self, folder: Path, key: dict[str, str], name: str = "model") -> str:
        """Log the MLflow model folder `folder` as a new model `name` of the run, tagged `key`: its URI."""
        model = self.client.create_logged_model(self.experiment_id, name=name, source_run_id=self.run_id, tags=key)
        self.client.log_model_artifacts(model.model_id, str(folder))
        self.client.finalize_logged_model(model.model_id, "READY")
        return f"models:/{model.model_id}"

    def register(self, model_uri: str, name: str, test_rmse: float, split_fingerprint: str,
                 key: dict[str, str], scores: dict[str, float] | None = None) -> tuple[str, str]:
        """Register `model_uri` under `name` (or find the version registered earlier with the
        same `key`) and give it the alias `choose_alias` picks: (version, alias). scores: its other
        test scores (test_mae, ndcg_at_10, ...), stated in the version's description."""
        version = self._version(model_uri, name, test_rmse, split_fingerprint, key, scores or {})
        alias = choose_alias(self.champion(name), Standing.of(version))
        self.client.set_registered_model_alias(name, alias, version.version)
        return str(version.version), alias

    def champion(self, name: str) -> Standing | None:
        """The version `name@champion` points at, or None."""
        version = self.client.get_registered_model(name).aliases.get("champion")
        return None if version is None else Standing.of(self.client.get_model_version(name, version))

    def _version(self, model_uri: str, name: str, test_rmse: float, split_fingerprint: str, key: dict[str, str],
                 scores: dict[str, float]):
        created = self._create_registered_model(name)
        try:
            mine = f"name = {filter_literal(name)} and run_id = {filter_literal(self.run_id)}"
            earlier = [v for v in self.client.search_model_versions(mine)
                       if all(v.tags.get(k) == value for k, value in key.items())]
            if earlier:
                return earlier[0]
            tags = {"test_rmse": f"{test_rmse:.6f}", "split_fingerprint": split_fingerprint, **key}
            # The source as stored, not `models:/<id>`: MLflow's store resolves that through the
            # process-wide tracking URI (a TODO of its own), which this client need not share.
            model = self.client.get_logged_model(model_uri.removeprefix("models:/"))
            # What the registry's page shows first: the test score that chose the alias, then the others
            # (SQLite's registry keeps no model_id on a version, so its metrics panel stays empty).
            others = "".join(f", {_TITLES.get(k, k)} {v:.4f}" for k, v in scores.items() if k != "test_rmse")
            description = (f"test RMSE {test_rmse:.4f}{others} on split {split_fingerprint[:12]} "
                           "(refit on train+valid)")
            return self.client.create_model_version(name, source=model.artifact_location, run_id=self.run_id,
                                                    model_id=model.model_id, tags=tags, description=description)
        except Exception:
            if created:  # no empty registered model left behind (a rerun would find it and fail the same way)
                self._delete_if_empty(name)
            raise

    def _create_registered_model(self, name: str) -> bool:
        """Create the registered model `name`; False if it exists already."""
        try:
            self.client.create_registered_model(name)
            return True
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            return False

    def _delete_if_empty(self, name: str) -> None:
        """Delete the registered model `name` if it holds no version (another study may have
        registered one since we created it: then it stays). Best effort: the error that brought us
        here is the one to report."""
        with contextlib.suppress(Exception):
            if not self.client.search_model_versions(f"name = {filter_literal(name)}", max_results=1):
                self.client.delete_registered_model(name)


def filter_literal(value: str) -> str:
    """`value` as a string literal of MLflow's search filters: quoted with whichever of ' and " it
    does not hold (MLflow strips the quotes and unescapes nothing, so 'bob''s' and 'bob\\'s' do not
    work; "bob's" does). A value holding both, or ending in a backslash (it would escape the
    closing quote), cannot be written: ValueError."""
    if value.endswith("\\"):
        raise ValueError(f"{value!r}: MLflow's search filters cannot quote a value ending in a backslash")
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"{value!r}: MLflow's search filters cannot quote a value holding both ' and \"")
