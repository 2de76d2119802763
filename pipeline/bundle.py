"""The model bundle: the logged scorer and the files `recommend` needs beside it, written and read
here only.

Files (MLflow `extra_files`): seen.parquet, the (user_id, item_id) pairs the model was fitted on;
items.json, {"dataset": name, "titles": {item_id: title}} (JSON keys are strings; integer ids are
restored on reading).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.tracking import TrackingError, configure_mlflow, reported

__all__ = ["ModelBundle", "load_bundle", "write_bundle_files"]

SEEN, ITEMS = "seen.parquet", "items.json"


def write_bundle_files(folder: Path, seen: pd.DataFrame, titles: dict, dataset: str) -> list[str]:
    """Write the bundle's files into `folder`; returns their paths for `log_model(extra_files=...)`.
    seen: columns user_id, item_id (raw ids)."""
    seen[["user_id", "item_id"]].to_parquet(folder / SEEN, index=False)
    (folder / ITEMS).write_text(json.dumps({"dataset": dataset, "titles": {str(k): v for k, v in titles.items()}}))
    return [str(folder / SEEN), str(folder / ITEMS)]


@dataclass(frozen=True)
class ModelBundle:
    """A registered model loaded for serving: the scorer, and what `recommend` needs beside it.

    scorer: int64 (N, 2) raw (user_id, item_id) -> float32 (N,) clamped ratings.
    seen: the (user_id, item_id) pairs the model was trained on. titles: item_id -> title.
    """

    uri: str
    scorer: object
    seen: pd.DataFrame
    titles: dict
    dataset: str

    def knows_user(self, user_id: int) -> bool:
        return bool((self.seen["user_id"].to_numpy() == user_id).any())

    def knows_item(self, item_id: int) -> bool:
        return bool((self.seen["item_id"].to_numpy() == item_id).any())


def load_bundle(model_uri: str, tracking_uri: str | None = None) -> ModelBundle:
    """Download a logged or registered model once and load it (pt2: no pickle is executed)."""
    import mlflow

    configure_mlflow(tracking_uri)
    with reported(tracking_uri or mlflow.get_tracking_uri(), f"loading model {model_uri!r}"):
        local = Path(mlflow.artifacts.download_artifacts(model_uri))
    extra = local / "extra_files"
    if not (extra / SEEN).exists():
        raise TrackingError(f"{model_uri}: not a pipeline model (no extra_files/{SEEN})")
    info = json.loads((extra / ITEMS).read_text())
    titles = {int(k) if k.lstrip("-").isdigit() else k: v for k, v in info["titles"].items()}
    return ModelBundle(uri=model_uri, scorer=mlflow.pytorch.load_model(str(local)),
                       seen=pd.read_parquet(extra / SEEN), titles=titles, dataset=info["dataset"])
