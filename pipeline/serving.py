"""The registered model's pyfunc, logged as an MLflow "model from code" (no pickle anywhere).

Input: a DataFrame with columns `user_id` and `item_id` (any order, found by name; from JSON, a
CSV body with a header row, or in process). Each column has its own kind, as the training data's
ids had. An integer column takes integers within int64 (7, "7"; floats such as 7.0 up to 2**53,
past which a float no longer names one integer). A string column takes text (trimmed); a number
stands for its plain text (7 -> "7") unless the model has ids such as "007" that no number names.
Output: float32 (N,) predicted ratings, clamped to the rating scale. Ids go through the exported
scorer (`scorer/model.pt2`); a string column's ids are first replaced by their position in
`vocabulary.json` ({column: ids}, string columns only). An id of the column's kind unseen in
training scores as the fallback row (the mean of its side's known rows: as the average known
id). A missing column, or a value that cannot be an id of its column (20.5, inf, 1e30, 2**64 - 20,
true, "abc" in an integer column; true or null in any), is an error naming the column, the row,
the value and what was expected (HTTP 400 from `mlflow models serve`), never a silent score.

Side features (a model trained with them: `features/` in its artifacts): optional columns
`user.<group>` and `item.<group>` (e.g. `user.age`, `user.zip`, `item.genre`), one value per row as
text or a number (a multi group's labels joined by `|`; missing or empty: no value). A row whose
id is unseen in training is scored from its values (its row: the fallback row + Σ_g k_g^-1/2
Σ_v W_g[v], in `features/scorer.pt2`); a known id keeps its learned row and its values are only
checked. Values are encoded as `SideFeatures.encode_row` encodes text (here restated: this file
imports no pipeline code; tests hold the two together): a numeric group buckets any finite number,
a label the model never saw is no value. Refused (HTTP 400, naming column, row, value, expected):
a column of a group or side the model has no table for, a number that is not finite or a word in
a numeric group, true/false, and a number for a label group whose labels a number cannot name (a
prefix group: CSV reads zip 02138 as 2138; send such values as JSON strings).

MLflow runs this file to load the model: it imports nothing from `pipeline`.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

COLUMNS = ("user_id", "item_id")
SIDES = ("user", "item")  # feature columns: "user.<group>", "item.<group>"
LOW, HIGH = -(2**63), 2**63 - 1  # an integer column's ids are int64: anything outside is no id of the model
EXACT = 2.0**53  # a float names an integer id only up to this size (beyond, a JSON float was rounded)
_INTEGER_TEXT = re.compile(r"(-?[0-9]+)(?:\.0+)?")  # 7, -3, 7.0: how integer ids are written
_PLAIN_INTEGER = r"-?(?:0|[1-9][0-9]*)"  # the one way str(int) writes an integer


class RatingModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.scorer = torch.export.load(str(Path(context.artifacts["scorer"]) / "model.pt2")).module()
        path = context.artifacts.get("vocabulary")
        vocabulary = json.loads(Path(path).read_text()) if path else {}
        # string columns only: raw id -> its row in the scorer; integer columns are the scorer's own ids
        self.positions = {column: pd.Index(ids, dtype=object) for column, ids in vocabulary.items()}
        self.numbers_ok = {column: _numbers_unambiguous(ids) for column, ids in vocabulary.items()}
        folder = context.artifacts.get("features")
        self.groups = json.loads((Path(folder) / "groups.json").read_text()) if folder else {}
        self.with_features = torch.export.load(str(Path(folder) / "scorer.pt2")).module() if folder else None
        for groups in self.groups.values():
            for group in groups:
                group["index"] = {label: j for j, label in enumerate(group["vocabulary"])}
                group["numbers_ok"] = not group["prefix"] and _numbers_unambiguous(group["vocabulary"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        missing = [c for c in COLUMNS if c not in model_input.columns]
        if missing:
            _refuse(f"missing column(s) {missing}: expected columns user_id and item_id, found "
                    f"{[str(c) for c in model_input.columns]}")
        if len(model_input) == 0:
            return np.empty(0, dtype=np.float32)
        pairs = torch.from_numpy(np.stack([self._ids(model_input[c]) for c in COLUMNS], axis=1))
        entries = self._entries(model_input)
        with torch.no_grad():
            return (self.scorer(pairs) if entries is None else self.with_features(pairs, *entries)).numpy()

    def _entries(self, frame: pd.DataFrame) -> list[torch.Tensor] | None:
        """The feature columns' values as the FeatureScorer's entries, int64 (M, 3) rows (row, group,
        value) per side; None without feature columns."""
        named = [c for c in frame.columns if isinstance(c, str) and c.partition(".")[0] in SIDES and "." in c]
        if not named:
            return None
        entries = {side: [] for side in SIDES}
        for name in named:
            side, _, group_name = name.partition(".")
            groups = self.groups.get(side, [])
            index = next((g for g, group in enumerate(groups) if group["name"] == group_name), None)
            if index is None or named.count(name) > 1:
                expected = ", ".join(f"{s}.{g['name']}" for s in SIDES for g in self.groups.get(s, []))
                why = "appears twice" if index is not None else (f"this model has no {side} feature {group_name!r}"
                                                                 if groups else f"this model has no {side} features")
                _refuse(f"column {name}: {why}: expected columns user_id, item_id"
                        f"{' and optionally ' + expected if expected else ' (it was trained without side features)'}")
            for row, codes in enumerate(_encode_column(frame[name], groups[index])):
                entries[side] += [(row, index, code) for code in codes]
        return [torch.tensor(entries[side], dtype=torch.int64).reshape(-1, 3) for side in SIDES]

    def _ids(self, column: pd.Series) -> np.ndarray:
        """int64 (N,) for the scorer: an integer column's ids as they are, a string column's positions
        in the vocabulary (-1, the fallback row, for ids unseen in training)."""
        if column.name not in self.positions:
            return _integers(column)
        texts = _texts(column, self.numbers_ok[column.name])
        return self.positions[column.name].get_indexer(texts).astype(np.int64)


def _integers(column: pd.Series) -> np.ndarray:
    """An integer column's values as int64 (N,): integers (not booleans), integral floats and
    integer text, each within int64; the first other value is refused."""
    kind = column.dtype.kind if not column.isna().any() else "O"
    if kind in "iu":
        values = column.to_numpy()
        bad = values > HIGH if kind == "u" else np.zeros(len(values), dtype=bool)
    elif kind == "f":
        values = column.to_numpy(dtype=np.float64)
        bad = ~(np.isfinite(values) & (values == np.floor(values)) & (np.abs(values) <= EXACT))
    else:
        parsed = [_integer(value) for value in column.tolist()]
        bad = np.array([p is None for p in parsed], dtype=bool)
        values = np.array([0 if p is None else p for p in parsed], dtype=np.int64)
    if bad.any():
        _refuse_value(column, int(np.argmax(bad)), "an integer from -2**63 to 2**63-1 (as a float, integral and "
                      "at most 2**53 in size): this model's {side} ids are integers")
    return values.astype(np.int64)


def _integer(value) -> int | None:
    """One value as an int within int64, or None when it cannot be one."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, (float, np.floating)):
        if not (math.isfinite(value) and float(value).is_integer() and abs(value) <= EXACT):
            return None
        number = int(value)
    elif isinstance(value, str) and (match := _INTEGER_TEXT.fullmatch(value.strip())):
        number = int(match.group(1))
    else:
        return None
    return number if LOW <= number <= HIGH else None


def _texts(column: pd.Series, numbers_ok: bool) -> list[str]:
    """A string column's values as the ids' text: strings trimmed, numbers as their plain text."""
    if pd.api.types.is_string_dtype(column) and not column.isna().any():
        return column.astype(str).str.strip().tolist()
    texts = []
    for row, value in enumerate(column.tolist()):
        if isinstance(value, str):
            texts.append(value.strip())
            continue
        number = _number_text(value)
        if number is None:
            _refuse_value(column, row, "text (this model's {side} ids are strings)")
        if not numbers_ok:
            _refuse_value(column, row, "text: this model has {side} ids that a number cannot name (such as "
                          "'007'), so send them as JSON strings, not as numbers or CSV")
        texts.append(number)
    return texts


def _number_text(value) -> str | None:
    """The plain text of a number as the ratings file's ids keep it (7.0 -> "7"), or None (a float
    beyond EXACT was rounded before it got here: it names no id for sure)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and abs(value) <= EXACT:
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    return None


def _numbers_unambiguous(ids: list[str]) -> bool:
    """Whether a number may stand for a text id: no id reads as a number written otherwise
    ("007", "+7", "1e3", "1.50"), so `_number_text` gives back the id a client wrote."""
    text = pd.Series(ids, dtype=object)
    other = text[~text.str.fullmatch(_PLAIN_INTEGER) | (text == "-0")]
    numeric = other[pd.to_numeric(other, errors="coerce").notna()]
    return all(_number_text(float(t)) == t for t in numeric)


def _encode_column(column: pd.Series, group: dict) -> list[list[int]]:
    """A feature column's value indices per row (`SideFeatures`' group encoding of each value's text)."""
    encoded, known = [], {}
    for row, value in enumerate(column.tolist()):
        text = _feature_text(value, group)
        if text is not None and text not in known:
            known[text] = _encode(text, group)
        if text is None or known[text] is None:
            side = str(column.name).partition(".")[0]
            _refuse(f"column {column.name}, row {row}: {_shown(value)} is no value of this model's {side} feature "
                    f"{group['name']!r}: expected {_expected(group)}")
        encoded.append(known[text])
    return encoded


def _feature_text(value, group: dict) -> str | None:
    """One feature value as the text `SideFeatures` encodes ("" for a missing value), or None when
    it cannot be one: a boolean, a list, a number a label group cannot read back as its text."""
    if value is None or (pd.api.types.is_scalar(value) and not isinstance(value, str) and bool(pd.isna(value))):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)) or group["kind"] != "numeric" and not group["numbers_ok"]:
        return None
    if group["kind"] == "numeric" and isinstance(value, (int, float, np.integer, np.floating)):
        return str(value.item() if isinstance(value, np.generic) else value)  # float() reads it back
    return _number_text(value)


def _encode(text: str, group: dict) -> list[int] | None:
    """`Group.encode` restated: text -> sorted distinct value indices ([]: none), None: not a number."""
    text = text.strip()
    if not text:
        return []
    if group["kind"] == "numeric":
        try:
            number = float(text)
        except ValueError:
            return None
        return [bisect.bisect_right(group["edges"], number)] if math.isfinite(number) else None
    parts = [part.strip() for part in (text.split("|") if group["kind"] == "multi" else [text])]
    labels = [part[: group["prefix"]] if group["prefix"] else part for part in parts if part]
    return sorted({group["index"][label] for label in labels if label in group["index"]})


def _expected(group: dict) -> str:
    """What a feature column takes, for a refusal."""
    labels = ", ".join(group["vocabulary"][:30]) + (", ..." if len(group["vocabulary"]) > 30 else "")
    if group["kind"] == "numeric":
        return f"a finite number (buckets {labels})"
    how = (f"text (its first {group['prefix']} characters are read; a number may have lost leading zeros)"
           if group["prefix"] else "text or a number" if group["numbers_ok"] else "text")
    what = "labels joined by |, each one of" if group["kind"] == "multi" else "one of"
    return f"{how}, {what} {labels} (others count as none)"


def _shown(value) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _refuse_value(column: pd.Series, row: int, expected: str) -> None:
    """Refuse the value at `row` (0-based) of `column`; `expected` may name the column's {side}."""
    value = column.iloc[row]
    missing = value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))
    shown = "a missing value" if missing else repr(value.item() if isinstance(value, np.generic) else value)
    side = str(column.name).split("_")[0]
    _refuse(f"column {column.name}, row {row}: {shown} cannot be one of this model's {side} ids: expected "
            f"{expected.format(side=side)}")


def _refuse(message: str) -> None:
    raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE)  # HTTP 400 from `mlflow models serve`


mlflow.models.set_model(RatingModel())
