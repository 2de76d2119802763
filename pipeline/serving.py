"""The registered model's pyfunc, logged as an MLflow "model from code" (no pickle anywhere).

Input: a DataFrame with columns `user_id` and `item_id` (any order, found by name), integers or
strings as the training data's ids were. Output: float32 (N,) predicted ratings, clamped to the
rating scale. Ids go through the exported raw-id scorer (`scorer/model.pt2`, the program that
`mlflow.pytorch.load_model` returns); string ids are first replaced by their position in
`vocabulary.json`. An unknown id scores as the fallback row (the global mean plus the known
side's bias). A missing column, or an id that is not of the model's kind (20.5, "abc" for an
integer model), is an error, never a silent score.

MLflow runs this file to load the model: it imports nothing from `pipeline`.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

COLUMNS = ("user_id", "item_id")


class RatingModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.scorer = torch.export.load(str(Path(context.artifacts["scorer"]) / "model.pt2")).module()
        vocabulary = context.artifacts.get("vocabulary")
        self.positions = None  # for string ids: raw id -> its row in the scorer
        if vocabulary:
            ids = json.loads(Path(vocabulary).read_text())
            self.positions = {column: pd.Index(ids[column]) for column in COLUMNS}

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        missing = [c for c in COLUMNS if c not in model_input.columns]
        if missing:
            _refuse(f"missing column(s) {missing}: expected columns user_id and item_id, found "
                    f"{[str(c) for c in model_input.columns]}")
        pairs = np.stack([self._ids(model_input[c]) for c in COLUMNS], axis=1)
        with torch.no_grad():
            return self.scorer(torch.from_numpy(pairs)).numpy()

    def _ids(self, column: pd.Series) -> np.ndarray:
        """int64 ids for the scorer: integral numbers as they are, strings by their position."""
        if self.positions is not None:
            return self.positions[column.name].get_indexer(column.astype(str)).astype(np.int64)  # unknown: -1
        values = pd.to_numeric(column, errors="coerce")
        bad = values.isna() | (values != np.floor(values))
        if bad.any():
            _refuse(f"column {column.name}: {column[bad].iloc[0]} is not an integer id: this model's ids are integers")
        return values.to_numpy().astype(np.int64)


def _refuse(message: str) -> None:
    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)  # HTTP 400 from `mlflow models serve`


mlflow.models.set_model(RatingModel())
