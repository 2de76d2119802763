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

A model with side features (`MatrixFactorization.side_tables`) also has features/: groups.json,
{side: [{"name", "kind", "vocabulary", "edges", "prefix"}]} (each group as `SideFeatures` encodes
it, for the sides the model has tables for), and scorer.pt2, the `FeatureScorer` (pairs plus feature
values: new users and items scored from them). The optional input columns `user.<group>` and
`item.<group>` are documented in the metadata's `feature_columns` (an optional column in an input
schema would be cast or refused by MLflow as the ids would: see above).
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException

from pipeline.model import SIDES, FeatureScorer, MatrixFactorization, RawIdScorer
from pipeline.tracking import TrackingError, reported

__all__ = ["ModelBundle", "load_bundle", "save_model"]

SERVING = Path(__file__).with_name("serving.py")
SEEN, ITEMS, VOCABULARY, GROUPS = "seen.parquet", "items.json", "vocabulary.json", "features/groups.json"
COLUMNS = ("user_id", "item_id")
INT64 = np.iinfo(np.int64)


def save_model(path: Path, model: MatrixFactorization, *, user_ids: np.ndarray, item_ids: np.ndarray,
               seen: pd.DataFrame, titles: dict, dataset: str, metadata: dict, features: dict | None = None) -> None:
    """Write the model folder at `path`. user_ids / item_ids: the raw ids of the model's rows
    (`Split.user_ids`), each integer (int64) or string on its own. seen: columns user_id, item_id
    (raw ids). features: {"user": SideFeatures, "item": ...} (`Ratings.user_features`, ...), the
    encoders of the model's `side_tables` (required for each side it has tables for)."""
    ids = {"user_id": _row_ids(user_ids, "user_ids"), "item_id": _row_ids(item_ids, "item_ids")}
    kinds = {column: _kind(row_ids) for column, row_ids in ids.items()}
    groups = _groups(model, features or {})
    example = seen[list(COLUMNS)].head(8).reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _export_scorers(folder, model, ids, example, bool(groups))
        seen[list(COLUMNS)].to_parquet(folder / SEEN, index=False)
        (folder / ITEMS).write_text(json.dumps({"dataset": dataset, "titles": {str(k): v for k, v in titles.items()}}))
        artifacts = {"scorer": str(folder / "scorer"), "seen": str(folder / SEEN), "items": str(folder / ITEMS)}
        vocabulary = {column: row_ids.tolist() for column, row_ids in ids.items() if kinds[column] == "string"}
        if vocabulary:
            (folder / VOCABULARY).write_text(json.dumps(vocabulary))
            artifacts["vocabulary"] = str(folder / VOCABULARY)
        if groups:
            (folder / GROUPS).write_text(json.dumps(groups))
            artifacts["features"] = str(folder / "features")
            metadata = {**metadata, "feature_columns": _feature_columns(groups)}
        _save_pyfunc(path, artifacts, example, {**metadata, "id_kinds": kinds})
    if set(kinds.values()) == {"integer"}:  # the scorer as a PyTorch model too (what mlflow.pytorch writes for pt2)
        from mlflow.models import Model

        mlmodel = Model.load(path / "MLmodel")
        mlmodel.add_flavor("pytorch", model_data="artifacts/scorer", pytorch_version=str(torch.__version__), code=None)
        mlmodel.save(path / "MLmodel")


def _groups(model: MatrixFactorization, features: dict) -> dict[str, list[dict]]:
    """groups.json: each side with tables, its groups' encoders; ValueError when they do not match."""
    groups = {}
    for side in SIDES:
        tables = model.side_tables.get(side)
        if not tables:
            continue
        given = getattr(features.get(side), "groups", None)
        shapes = [len(t) for t in tables]
        if given is None or [len(g.vocabulary) for g in given] != shapes:
            found = "none" if given is None else ", ".join(f"{g.name} ({len(g.vocabulary)})" for g in given)
            raise ValueError(f"save_model: the model has {side} feature tables of {shapes} rows: expected "
                             f"features[{side!r}] with groups of those vocabulary sizes, found {found}")
        groups[side] = [{"name": g.name, "kind": g.kind, "vocabulary": list(g.vocabulary), "edges": list(g.edges),
                         "prefix": g.prefix} for g in given]
    return groups


def _feature_columns(groups: dict[str, list[dict]]) -> dict[str, str]:
    """The metadata's documentation of the optional feature columns: {"user.age": what it takes}."""
    def takes(group: dict) -> str:
        labels = ", ".join(group["vocabulary"][:20]) + (", ..." if len(group["vocabulary"]) > 20 else "")
        if group["kind"] == "numeric":
            return f"a number, bucketed into {labels}"
        what = "labels joined by '|', each " if group["kind"] == "multi" else ""
        cut = f"text whose first {group['prefix']} character(s) are " if group["prefix"] else ""
        return f"{what}{cut}one of {labels} (others: no value)"

    columns = {f"{side}.{g['name']}": f"optional, {g['kind']}: {takes(g)}" for side, side_groups in groups.items()
               for g in side_groups}
    return {"use": "an id unseen in training is scored from these values; a known id keeps its learned row",
            **columns}


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


def _export_scorers(folder: Path, model: MatrixFactorization, ids: dict[str, np.ndarray], example: pd.DataFrame,
                    features: bool) -> None:
    """The scorer as `folder`/scorer/model.pt2 (`torch.export`, any batch size): an integer column's
    rows are keyed by their ids, a string column's by their position in `ids`; with `features`, the
    `FeatureScorer` too, as `folder`/features/scorer.pt2 (any number of feature values)."""
    keys = {c: torch.from_numpy(v if _kind(v) == "integer" else np.arange(len(v))) for c, v in ids.items()}
    codes = np.stack([example[c].to_numpy(np.int64) if _kind(v) == "integer"
                      else pd.Index(v).get_indexer(example[c].astype(str)) for c, v in ids.items()], 1)
    pairs = torch.from_numpy(codes.astype(np.int64))
    model = copy.deepcopy(model).cpu().eval().requires_grad_(False)  # a loaded scorer builds no autograd graph
    _export(RawIdScorer(model, keys["user_id"], keys["item_id"]), (pairs,), folder / "scorer" / "model.pt2")
    if features:
        entries = torch.tensor([[0, 0, 0], [len(pairs) - 1, 0, 0]])  # any two valid rows: the shapes vary
        _export(FeatureScorer(model, keys["user_id"], keys["item_id"]), (pairs, entries, entries.clone()),
                folder / "features" / "scorer.pt2")


def _export(scorer: torch.nn.Module, inputs: tuple, path: Path) -> None:
    """`scorer` exported with every input's first dimension dynamic, saved at `path`."""
    program = torch.export.export(scorer.eval(), inputs, dynamic_shapes=tuple({0: torch.export.Dim.AUTO}
                                                                               for _ in inputs))
    path.parent.mkdir(exist_ok=True)
    torch.export.save(program, path)


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
    id kind). titles: item_id -> title. features: {side: [group encoders]} as groups.json has
    them, for the sides the model scores new entities of from their features ({}: none).
    """

    uri: str
    model: object
    seen: pd.DataFrame
    titles: dict
    dataset: str
    features: dict = field(default_factory=dict)

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

    def parse_features(self, side: str, text: str, what: str) -> dict[str, str]:
        """`group=value,group=value` (a multi group's labels joined by `|`) -> {group: value};
        ValueError naming `what` for a model without `side` features, an unknown group, a bad pair."""
        names = [g["name"] for g in self.features.get(side, [])]
        if not names:
            raise ValueError(f"{what}: this model has no {side} features (it was trained without them)")
        values = {}
        for pair in filter(str.strip, text.split(",")):
            name, equals, value = pair.partition("=")
            if not equals or name.strip() not in names:
                raise ValueError(f"{what} {pair.strip()!r}: expected group=value with a group of this model's "
                                 f"{side} features: {', '.join(names)}")
            values[name.strip()] = value.strip()
        return values

    def score(self, users, items, user_features: dict | None = None, item_features: dict | None = None
              ) -> np.ndarray:
        """Predicted ratings float32 (N,) for raw ids (sequences of equal length). user_features /
        item_features: {group: value as text} given to every row (columns `user.<group>`, ...): an id
        unseen in training is scored from them. ValueError for values the model refuses."""
        frame = pd.DataFrame({"user_id": list(users), "item_id": list(items)})
        for side, values in (("user", user_features), ("item", item_features)):
            for name, value in (values or {}).items():
                frame[f"{side}.{name}"] = pd.Series([value] * len(frame), dtype=object)
        try:
            return np.asarray(self.model.predict(frame), dtype=np.float32)
        except MlflowException as exc:
            if exc.error_code != "INVALID_PARAMETER_VALUE":
                raise
            raise ValueError(exc.message) from None


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
    features = json.loads((files / GROUPS).read_text()) if (files / GROUPS).exists() else {}
    return ModelBundle(uri=model_uri, model=model, seen=seen, titles=titles, dataset=dataset, features=features)


def _items(path: Path, model_uri: str, integer: bool) -> tuple[str, dict]:
    """items.json's dataset name and titles, keyed by item ids of the item column's kind."""
    try:
        info = json.loads(path.read_text())
        titles = {int(k) if integer else k: v for k, v in info["titles"].items()}
        return str(info["dataset"]), titles
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TrackingError(f"{model_uri}: artifacts/{ITEMS} is unreadable ({type(exc).__name__}: {exc}): expected "
                            f'{{"dataset": name, "titles": {{item_id: title}}}}') from None
