"""The `Ratings` type: one validated, canonical, fingerprinted ratings table.

Sources (`pipeline.ingest`) parse files into a raw frame and hand it to `validate`; everything
downstream (`split`, the trainer) depends on this type only, never on the downloaders.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["COLUMNS", "IngestError", "Ratings", "canonical", "validate"]

COLUMNS = ("user_id", "item_id", "rating", "timestamp")


class IngestError(ValueError):
    """Bad input: names the file, the line or column, the value and what was expected."""


@dataclass(frozen=True, eq=False)
class Ratings:
    """A validated ratings table, sorted by (user_id, item_id), one row per pair.

    `frame` columns: user_id, item_id (int64, or str where the source's ids are not integers),
    rating (float32), timestamp (int64 seconds; 0 where the source has none).
    `fingerprint` is the sha256 of that canonical table: the same data from two sources has one
    fingerprint. `item_titles` maps item_id -> title where the source has titles.
    """

    frame: pd.DataFrame
    name: str
    rating_scale: tuple[float, float]
    fingerprint: str
    source: str = ""
    duplicates_dropped: int = 0
    item_titles: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def n_users(self) -> int:
        return self.frame["user_id"].nunique()

    @property
    def n_items(self) -> int:
        return self.frame["item_id"].nunique()

    def replace(self, **changes) -> Ratings:
        """A copy with `changes` (e.g. item_titles); the frame is shared, not copied."""
        return dataclasses.replace(self, **changes)


def validate(frame: pd.DataFrame, where: str, first_line: int | None, *, name: str, rating_scale) -> Ratings:
    def at(row: int) -> str:
        return f"line {first_line + row}" if first_line is not None else f"row {row}"

    if len(frame) == 0:
        raise IngestError(f"{where}: empty file: expected at least one rating")
    out = pd.DataFrame({"user_id": _ids(frame["user_id"], where, at), "item_id": _ids(frame["item_id"], where, at)})
    rating = _numbers(frame["rating"], where, at, "is not a finite number: expected a numeric rating")
    low, high = rating_scale if rating_scale is not None else (float(rating.min()), float(rating.max()))
    if not low <= high:
        raise IngestError(f"rating_scale: low {low} > high {high}")
    outside = (rating < low) | (rating > high)
    if outside.any():
        row = int(np.argmax(outside))
        raise IngestError(f"{where}: {at(row)}, column 'rating': {rating[row]:g} is outside the rating "
                          f"scale: expected {low:g} <= rating <= {high:g}")
    out["rating"] = rating.astype(np.float32)
    if "timestamp" in frame.columns:
        out["timestamp"] = _numbers(frame["timestamp"], where, at,
                                    "is not a number: expected seconds since the epoch").astype(np.int64)
    else:
        out["timestamp"] = np.zeros(len(out), dtype=np.int64)
    return canonical(out, name=name, rating_scale=(float(low), float(high)), source=where)


def _numbers(column: pd.Series, where: str, at, problem: str) -> np.ndarray:
    """The column as float64; the first value that is not a finite number is an error."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise IngestError(f"{where}: {at(row)}, column {column.name!r}: {column.iloc[row]!r} {problem}")
    return values


def _ids(column: pd.Series, where: str, at) -> pd.Series:
    """Integer ids where every id is an integer, else strings (one type per column)."""
    missing = column.isna().to_numpy()
    if missing.any():
        row = int(np.argmax(missing))
        raise IngestError(f"{where}: {at(row)}, column {column.name!r}: empty id: expected an id")
    if pd.api.types.is_integer_dtype(column):
        return column.astype(np.int64)
    text = column.astype(str).str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().all() and (numbers == np.round(numbers)).all() and not text.str.contains(r"[.eE]").any():
        return numbers.astype(np.int64)
    return text


def canonical(frame: pd.DataFrame, *, name: str, rating_scale, source: str) -> Ratings:
    """Sort by (user, item), keep the latest rating of each pair, and fingerprint.

    One stable lexsort on (user, item, timestamp) does both jobs: duplicates end up adjacent with
    the latest last (equal timestamps: the later line last). O(n log n) time, a few int64 arrays of
    memory: ML-25M's 25 M rows stay within a few GiB."""
    user, item = _order_key(frame["user_id"]), _order_key(frame["item_id"])
    order = np.lexsort((frame["timestamp"].to_numpy(), item, user))
    user, item = user[order], item[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = (user[1:] != user[:-1]) | (item[1:] != item[:-1])
    del user, item
    kept = frame.iloc[order[last]].reset_index(drop=True)
    return Ratings(frame=kept, name=name, rating_scale=rating_scale, fingerprint=_fingerprint(kept),
                   source=source, duplicates_dropped=len(frame) - len(kept))


def _order_key(ids: pd.Series) -> np.ndarray:
    """Integers that sort like the ids: the ids themselves, or string ids' ranks."""
    if pd.api.types.is_integer_dtype(ids):
        return ids.to_numpy()
    return pd.factorize(ids, sort=True)[0]


def _fingerprint(frame: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for col in COLUMNS:
        values = frame[col]
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            digest.update("\0".join(values.astype(str)).encode())
        else:
            digest.update(memoryview(np.ascontiguousarray(values.to_numpy())))
        digest.update(col.encode())
    return digest.hexdigest()
