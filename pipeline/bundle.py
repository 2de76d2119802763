"""The logged model: its files, written and read here only.

An MLflow model folder with the pyfunc of `pipeline/serving.py` (a model from code) and, as its
artifacts: scorer/model.pt2, the exported raw-id scorer (`torch.export`: no pickle); seen.parquet,
the (user_id, item_id) pairs it was fitted on; items.json, {"dataset": name, "titles": {item_id:
title}} (JSON keys are strings; integer ids are restored on reading); for string ids,
vocabulary.json, each column's ids in the scorer's row order. The signature names the columns
(`user_id`, `item_id`, long or string). Integer-id models also carry the `pytorch` flavor, so
`mlflow.pytorch.load_model` returns the scorer itself: int64 (N, 2) raw ids -> float32 (N,).
"""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.model import MatrixFactorization, RawIdScorer
from pipeline.tracking import TrackingError, reported

__all__ = ["ModelBundle", "load_bundle", "save_model"]

SERVING = Path(__file__).with_name("serving.py")
SEEN, ITEMS, VOCABULARY = "seen.parquet", "items.json", "vocabulary.json"


def save_model(path: Path, model: MatrixFactorization, *, user_ids: np.ndarray, item_ids: np.ndarray,
               seen: pd.DataFrame, titles: dict, dataset: str, metadata: dict) -> None:
    """Write the model folder at `path`. user_ids / item_ids: the raw ids of the model's rows
    (`Split.user_ids`); integer ids are the scorer's own, string ids map to their positions
    through the vocabulary. seen: columns user_id, item_id (raw ids)."""
    integer = np.issubdtype(user_ids.dtype, np.integer) and np.issubdtype(item_ids.dtype, np.integer)
    example = seen[["user_id", "item_id"]].head(8).reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _export_scorer(folder / "scorer", model, user_ids, item_ids, example, integer)
        seen[["user_id", "item_id"]].to_parquet(folder / SEEN, index=False)
        (folder / ITEMS).write_text(json.dumps({"dataset": dataset, "titles": {str(k): v for k, v in titles.items()}}))
        artifacts = {"scorer": str(folder / "scorer"), "seen": str(folder / SEEN), "items": str(folder / ITEMS)}
        if not integer:
            (folder / VOCABULARY).write_text(json.dumps({"user_id": user_ids.tolist(), "item_id": item_ids.tolist()}))
            artifacts["vocabulary"] = str(folder / VOCABULARY)
        _save_pyfunc(path, artifacts, example, metadata)
    if integer:  # the scorer as a PyTorch model too (what mlflow.pytorch.save_model would write for pt2)
        from mlflow.models import Model

        mlmodel = Model.load(path / "MLmodel")
        mlmodel.add_flavor("pytorch", model_data="artifacts/scorer", pytorch_version=str(torch.__version__), code=None)
        mlmodel.save(path / "MLmodel")


def _export_scorer(folder: Path, model: MatrixFactorization, user_ids: np.ndarray, item_ids: np.ndarray,
                   example: pd.DataFrame, integer: bool) -> None:
    """The raw-id scorer as `folder`/model.pt2 (`torch.export`, any batch size): integer ids are
    its rows' own, string ids their positions in the sorted vocabulary."""
    rows = lambda ids: torch.from_numpy(ids if integer else np.arange(len(ids)))  # noqa: E731
    scorer = RawIdScorer(model.cpu().eval(), rows(user_ids), rows(item_ids)).eval()
    codes = example.to_numpy(np.int64) if integer else np.stack(
        [np.searchsorted(user_ids, example.user_id), np.searchsorted(item_ids, example.item_id)], 1)
    program = torch.export.export(scorer, (torch.from_numpy(codes.copy()),),
                                  dynamic_shapes=({0: torch.export.Dim.AUTO},))  # any batch size
    folder.mkdir()
    torch.export.save(program, folder / "model.pt2")


def _save_pyfunc(path: Path, artifacts: dict[str, str], example: pd.DataFrame, metadata: dict) -> None:
    """The MLflow model folder: serving.py's pyfunc over `artifacts`, a signature naming the columns."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema
    from mlflow.types.schema import AnyType

    # "any", not long: MLflow's server would cast a JSON 20.5 to 20 before the model sees it;
    # serving.py checks the ids itself (names required, integral or string as the data's were).
    signature = ModelSignature(inputs=Schema([ColSpec(AnyType(), "user_id"), ColSpec(AnyType(), "item_id")]))
    with warnings.catch_warnings():  # "add type hints to predict": the signature is the contract here
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            path, python_model=str(SERVING), artifacts=artifacts, input_example=example, metadata=metadata,
            signature=signature,
            # Pinned here: inferring requirements would import the model's modules (seconds).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                              "pandas", "pyarrow"])


@dataclass(frozen=True)
class ModelBundle:
    """A logged or registered model loaded for serving: its pyfunc and what `recommend` needs.

    seen: the (user_id, item_id) pairs the model was fitted on. titles: item_id -> title.
    """

    uri: str
    model: object
    seen: pd.DataFrame
    titles: dict
    dataset: str

    @property
    def integer_ids(self) -> bool:
        return pd.api.types.is_integer_dtype(self.seen["user_id"])

    def parse_id(self, text: str, what: str):
        """A command-line id as the model's kind (int or str); ValueError when it cannot be one."""
        if not self.integer_ids:
            return text
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{what} {text!r}: this model's ids are integers") from None

    def knows(self, column: str, raw_id) -> bool:
        return bool((self.seen[column].to_numpy() == raw_id).any())

    def score(self, users, items) -> np.ndarray:
        """Predicted ratings float32 (N,) for raw ids (sequences of equal length)."""
        return np.asarray(self.model.predict(pd.DataFrame({"user_id": users, "item_id": items})), dtype=np.float32)


def load_bundle(model_uri: str) -> ModelBundle:
    """Download a logged or registered model once and load it (no pickle is executed), from the
    store MLflow is set up for: a command's `tracking.configure_mlflow`, or the caller's own
    `mlflow.set_tracking_uri` (MLflow resolves `models:/` URIs through the process-wide URI)."""
    import mlflow

    tracking_uri = mlflow.get_tracking_uri()
    with reported(tracking_uri, f"loading model {model_uri!r}"):
        local = Path(mlflow.artifacts.download_artifacts(model_uri))
        files = local / "artifacts"
        if not (files / SEEN).exists():
            raise TrackingError(f"{model_uri}: not a pipeline model (no artifacts/{SEEN})")
        model = mlflow.pyfunc.load_model(str(local))
    info = json.loads((files / ITEMS).read_text())
    titles = {int(k) if k.lstrip("-").isdigit() else k: v for k, v in info["titles"].items()}
    return ModelBundle(uri=model_uri, model=model, seen=pd.read_parquet(files / SEEN), titles=titles,
                       dataset=info["dataset"])
