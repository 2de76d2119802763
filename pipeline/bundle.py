"""The logged model: its files, written and read here only.

An MLflow model folder with the pyfunc of `pipeline/serving.py` (a model from code) and, as its
artifacts: scorer/model.pt2, the exported scorer (`torch.export`: no pickle), int64 (N, 2) ->
float32 (N,); seen.parquet, the (user_id, item_id) pairs it was fitted on; items.json, {"dataset":
name, "titles": {item_id: title}} (JSON keys are strings; an integer item column's are restored on
reading); vocabulary.json, {column: ids in the scorer's row order} for the string columns only.
Each column keeps its own id kind, integer (int64, the scorer's own ids) or string (the scorer
takes its position in the vocabulary), as `Split.user_ids` / `item_ids` had it; the metadata's
`id_kinds` records them. The signature declares the output only: serving.py checks the columns
itself (an input schema would make MLflow cast or refuse values before it sees them, and its
server cannot read CSV against a schema of "any"). When both columns are integer the model also
carries the `pytorch` flavor, so `mlflow.pytorch.load_model` returns the scorer itself.
"""

from __future__ import annotations

import json
import re
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
COLUMNS = ("user_id", "item_id")
INT64 = np.iinfo(np.int64)


def save_model(path: Path, model: MatrixFactorization, *, user_ids: np.ndarray, item_ids: np.ndarray,
               seen: pd.DataFrame, titles: dict, dataset: str, metadata: dict) -> None:
    """Write the model folder at `path`. user_ids / item_ids: the raw ids of the model's rows
    (`Split.user_ids`), each integer (int64) or string on its own. seen: columns user_id, item_id
    (raw ids)."""
    ids = {"user_id": _row_ids(user_ids, "user_ids"), "item_id": _row_ids(item_ids, "item_ids")}
    kinds = {column: _kind(row_ids) for column, row_ids in ids.items()}
    example = seen[list(COLUMNS)].head(8).reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _export_scorer(folder / "scorer", model, ids, example)
        seen[list(COLUMNS)].to_parquet(folder / SEEN, index=False)
        (folder / ITEMS).write_text(json.dumps({"dataset": dataset, "titles": {str(k): v for k, v in titles.items()}}))
        artifacts = {"scorer": str(folder / "scorer"), "seen": str(folder / SEEN), "items": str(folder / ITEMS)}
        vocabulary = {column: row_ids.tolist() for column, row_ids in ids.items() if kinds[column] == "string"}
        if vocabulary:
            (folder / VOCABULARY).write_text(json.dumps(vocabulary))
            artifacts["vocabulary"] = str(folder / VOCABULARY)
        _save_pyfunc(path, artifacts, example, {**metadata, "id_kinds": kinds})
    if set(kinds.values()) == {"integer"}:  # the scorer as a PyTorch model too (what mlflow.pytorch writes for pt2)
        from mlflow.models import Model

        mlmodel = Model.load(path / "MLmodel")
        mlmodel.add_flavor("pytorch", model_data="artifacts/scorer", pytorch_version=str(torch.__version__), code=None)
        mlmodel.save(path / "MLmodel")


def _kind(ids: np.ndarray) -> str:
    return "integer" if np.issubdtype(ids.dtype, np.integer) else "string"


def _row_ids(ids, what: str) -> np.ndarray:
    """A column's row ids (N,): integers as int64 (ValueError beyond it), anything else as str."""
    ids = np.asarray(ids)
    if _kind(ids) == "string":
        return np.asarray([str(i) for i in ids], dtype=object)
    if len(ids) and ids.max() > INT64.max:  # uint64 only: no integer dtype goes below int64
        raise ValueError(f"save_model: {what}: {ids.max()} is outside int64: expected int64 ids (larger ones as text)")
    return ids.astype(np.int64)


def _export_scorer(folder: Path, model: MatrixFactorization, ids: dict[str, np.ndarray], example: pd.DataFrame
                   ) -> None:
    """The scorer as `folder`/model.pt2 (`torch.export`, any batch size): an integer column's rows
    are keyed by their ids, a string column's by their position in `ids`."""
    keys = {c: torch.from_numpy(v if _kind(v) == "integer" else np.arange(len(v))) for c, v in ids.items()}
    scorer = RawIdScorer(model.cpu().eval(), keys["user_id"], keys["item_id"]).eval()
    codes = np.stack([example[c].to_numpy(np.int64) if _kind(v) == "integer"
                      else pd.Index(v).get_indexer(example[c].astype(str)) for c, v in ids.items()], 1)
    program = torch.export.export(scorer, (torch.from_numpy(codes.astype(np.int64)),),
                                  dynamic_shapes=({0: torch.export.Dim.AUTO},))  # any batch size
    folder.mkdir()
    torch.export.save(program, folder / "model.pt2")


def _save_pyfunc(path: Path, artifacts: dict[str, str], example: pd.DataFrame, metadata: dict) -> None:
    """The MLflow model folder: serving.py's pyfunc over `artifacts`, a signature of its output."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    # No input schema: with one, MLflow casts JSON values to it (20.5 -> 20 for long) or refuses
    # in-process integers (string), and its server reads no CSV against "any"; serving.py checks
    # each column against its own kind instead. The output: float32 (N,) ratings.
    signature = ModelSignature(inputs=None, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]))
    with warnings.catch_warnings():  # "add type hints to predict": serving.py's checks are the contract here
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            path, python_model=str(SERVING), artifacts=artifacts, input_example=example, metadata=metadata,
            signature=signature,
            # Pinned here: inferring requirements would import the model's modules (seconds).
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                              "pandas", "pyarrow"])


_INTEGER_TEXT = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class ModelBundle:
    """A logged or registered model loaded for serving: its pyfunc and what `recommend` needs.

    seen: the (user_id, item_id) pairs the model was fitted on, each column int64 or strings (its
    id kind). titles: item_id -> title.
    """

    uri: str
    model: object
    seen: pd.DataFrame
    titles: dict
    dataset: str

    def kind(self, column: str) -> str:
        """`column`'s id kind: "integer" (int64) or "string"."""
        return "integer" if pd.api.types.is_integer_dtype(self.seen[column]) else "string"

    def parse_id(self, column: str, text: str, what: str):
        """A command-line id as `column`'s kind (int or str); ValueError when it cannot be one."""
        if self.kind(column) == "string":
            return text
        side = column.split("_")[0]
        if not _INTEGER_TEXT.fullmatch(text.strip()):
            raise ValueError(f"{what} {text!r}: this model's {side} ids are integers")
        number = int(text)
        if not INT64.min <= number <= INT64.max:
            raise ValueError(f"{what} {text}: cannot be one of this model's {side} ids: expected an integer "
                             f"from -2**63 to 2**63-1 (its {side} ids are int64)")
        return number

    def knows(self, column: str, raw_id) -> bool:
        return bool(self.seen[column].eq(raw_id).any())

    def score(self, users, items) -> np.ndarray:
        """Predicted ratings float32 (N,) for raw ids (sequences of equal length)."""
        frame = pd.DataFrame({"user_id": list(users), "item_id": list(items)})
        return np.asarray(self.model.predict(frame), dtype=np.float32)


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
        if not (files / ITEMS).exists():
            raise TrackingError(f"{model_uri}: artifacts/{ITEMS} is missing (the dataset's name and item titles): "
                                f"put it back, or register a model that python -m pipeline.search logged")
        model = mlflow.pyfunc.load_model(str(local))
    seen = pd.read_parquet(files / SEEN)
    dataset, titles = _items(files / ITEMS, model_uri, pd.api.types.is_integer_dtype(seen["item_id"]))
    return ModelBundle(uri=model_uri, model=model, seen=seen, titles=titles, dataset=dataset)


def _items(path: Path, model_uri: str, integer: bool) -> tuple[str, dict]:
    """items.json's dataset name and titles, keyed by item ids of the item column's kind."""
    try:
        info = json.loads(path.read_text())
        titles = {int(k) if integer else k: v for k, v in info["titles"].items()}
        return str(info["dataset"]), titles
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TrackingError(f"{model_uri}: artifacts/{ITEMS} is unreadable ({type(exc).__name__}: {exc}): expected "
                            f'{{"dataset": name, "titles": {{item_id: title}}}}') from None
