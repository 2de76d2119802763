"""The `Ratings` type: one validated, canonical, fingerprinted ratings table.

Sources (`pipeline.ingest`) parse files into a raw frame and hand it to `validate`; everything
downstream (`split`, the trainer) depends on this type only, never on the downloaders.
"""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import reprlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.features import SideFeatures

__all__ = ["COLUMNS", "TIME_RANGE", "IngestError", "Ratings", "canonical", "check_scale", "validate"]

COLUMNS = ("user_id", "item_id", "rating", "timestamp")


class IngestError(ValueError):
    """Bad input: names the file, the line or column, the value and what was expected."""


@dataclass(frozen=True, eq=False)
class Ratings:
    """A validated ratings table, sorted by (user_id, item_id), one row per pair.

    `frame` columns: user_id, item_id, rating (float32), timestamp (int64 whole seconds since the
    epoch, UTC, or a finer unit as the source wrote it, within `TIME_RANGE`; datetimes converted
    to seconds, fractions floored; 0 where the source has none). Ids are kept exactly, one type per column (booleans, lists, bytes,
    dates are refused): int64 when every id of the column is an integer that fits int64, written
    plainly (`7`, `-3`) or as an integral decimal (`7.0`, as float columns are often exported: `7.0`
    and `7` are one id). Otherwise str, each id as written (trimmed), integers in plain form (`7.0`
    -> "7"): `007`, `7e0` and integers beyond int64 stay text of their own, so no two distinct ids
    merge and no id splits.
    `fingerprint` is the sha256 of that canonical table: the same data from two sources has one
    fingerprint. `duplicates_dropped`: rows left out because their (user, item) pair has a later
    rating (reported, not fingerprinted). `item_titles` maps item_id -> title where the source has
    titles. `user_features` / `item_features`: each side's features where the source has them
    (`pipeline.features`; keyed by ids of the column's kind; not fingerprinted: see their `digest`).
    """

    frame: pd.DataFrame
    name: str
    rating_scale: tuple[float, float]
    fingerprint: str
    source: str = ""
    duplicates_dropped: int = 0
    item_titles: dict = field(default_factory=dict, repr=False)
    user_features: SideFeatures | None = field(default=None, repr=False)
    item_features: SideFeatures | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def n_users(self) -> int:
        return self.frame["user_id"].nunique()

    @property
    def n_items(self) -> int:
        return self.frame["item_id"].nunique()

    def describe(self) -> str:
        """One line for people: name, ratings, users, items, and the duplicate pairs dropped."""
        dropped = self.duplicates_dropped
        kept = f"; {dropped:,} duplicate (user, item) pair(s) dropped, the latest rating kept" if dropped else ""
        return f"{self.name}: {len(self):,} ratings, {self.n_users:,} users, {self.n_items:,} items{kept}"

    def replace(self, **changes) -> Ratings:
        """A copy with `changes` (e.g. item_titles); the frame is shared, not copied."""
        return dataclasses.replace(self, **changes)


def validate(frame: pd.DataFrame, where: str, lines, *, name: str, rating_scale) -> Ratings:
    """Check and canonicalise a raw frame (user_id, item_id, rating[, timestamp] columns of text or
    numbers). `lines`: the file line of each row (an int array), of the first row (an int), or None
    (errors then name rows). `rating_scale`: (low, high), or None to take the data's min and max."""
    def at(row: int) -> str:
        if lines is None:
            return f"row {row}"
        return f"line {lines[row] if isinstance(lines, np.ndarray) else lines + row}"

    if len(frame) == 0:
        raise IngestError(f"{where}: empty file: expected at least one rating")
    out = pd.DataFrame({"user_id": _ids(frame["user_id"], where, at), "item_id": _ids(frame["item_id"], where, at)})
    rating = _numbers(frame["rating"], where, at, "is not a finite number: expected a numeric rating")
    declared = rating_scale is not None
    low, high = check_scale(rating_scale) if declared else (float(rating.min()), float(rating.max()))
    outside = (rating < low) | (rating > high)
    if outside.any():
        row = int(np.argmax(outside))
        raise IngestError(f"{where}: {at(row)}, column 'rating': {rating[row]:g} is outside the rating "
                          f"scale: expected {low:g} <= rating <= {high:g}")
    out["rating"] = rating.astype(np.float32)
    has_time = "timestamp" in frame.columns
    out["timestamp"] = _timestamps(frame["timestamp"], where, at) if has_time else np.zeros(len(out), dtype=np.int64)
    return canonical(out, name=name, rating_scale=(low, high), source=where)


def check_scale(scale) -> tuple[float, float]:
    """A declared rating scale as (low, high) floats: two finite numbers, low <= high."""
    try:
        low, high = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise IngestError(f"rating_scale {scale!r}: expected two numbers, low and high") from None
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise IngestError(f"rating_scale ({low:g}, {high:g}): expected finite numbers with low <= high")
    return low, high


def _numbers(column: pd.Series, where: str, at, problem: str) -> np.ndarray:
    """The column as float64; the first value that is not a finite number is an error."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.argmax(bad))
        raise IngestError(f"{where}: {at(row)}, column {column.name!r}: {column.iloc[row]!r} {problem}")
    return values


# A timestamp is a whole number of seconds since the epoch (a finer unit, e.g. milliseconds,
# orders the temporal split just as well, so it is kept as it is), at most 2^53 in magnitude: float64
# holds every such value exactly and split's `-timestamp` cannot overflow. Beyond it a value is no
# time (1e30, once stored as INT64_MIN).
TIME_RANGE = (-2**53, 2**53)


def _timestamps(column: pd.Series, where: str, at) -> np.ndarray:
    """int64 times since the epoch (N,): numbers floored to whole units (seconds expected), datetimes
    of any unit and zone as UTC seconds. A value that is no number, no datetime or outside
    `TIME_RANGE` is an error."""
    low, high = TIME_RANGE
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        column = column.dt.tz_convert(None)
    if pd.api.types.is_datetime64_dtype(column.dtype):
        missing = column.isna().to_numpy()
        if missing.any():
            row = int(np.argmax(missing))
            raise IngestError(f"{where}: {at(row)}, column {column.name!r}: missing value: expected a date and time")
        values = column.to_numpy().astype("datetime64[s]").view(np.int64)  # floors, like the numbers
    elif pd.api.types.is_integer_dtype(column.dtype) and not column.isna().any():
        # exact (uint64 too): compared with the range before any cast
        values = column.to_numpy(dtype=getattr(column.dtype, "numpy_dtype", column.dtype))
    else:
        _refuse_kind(column, where, at, "expected seconds since the epoch or a datetime")
        values = np.floor(_numbers(column, where, at, "is not a number: expected seconds since the epoch"))
    outside = (values < low) | (values > high)
    if outside.any():
        row = int(np.argmax(outside))
        raise IngestError(f"{where}: {at(row)}, column {column.name!r}: {column.iloc[row]} is out of range: expected "
                          f"a time since the epoch within ±2^53 (seconds, or a finer unit)")
    return values.astype(np.int64)


# What an id or a time may be read from: numbers and text (not lists, bytes, booleans, dates...).
_SCALARS = (str, int, float, np.integer, np.floating, decimal.Decimal)


def _refuse_kind(column: pd.Series, where: str, at, expected: str) -> None:
    """An error at the first value that is neither a number nor text: a boolean, datetime or other
    typed column at its first value; an object column (parquet lists, bytes, structs, dates) at the
    first such value."""
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return _refuse_kind(pd.Series(np.asarray(column), name=column.name), where, at, expected)
    if pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_float_dtype(dtype):
        return
    if dtype == object:
        if pd.api.types.infer_dtype(column, skipna=True) in ("string", "integer", "floating", "decimal", "empty"):
            return
        foreign = [isinstance(v, (bool, np.bool_)) or not (v is None or v is pd.NA or isinstance(v, _SCALARS))
                   for v in column.tolist()]
        if not any(foreign):
            return
        row = foreign.index(True)
    elif pd.api.types.is_string_dtype(dtype):
        return
    else:
        row = int(np.argmax(column.notna().to_numpy()))
    value = column.iloc[row]
    value = value.item() if isinstance(value, np.generic) else value
    kind = "list" if isinstance(value, (list, np.ndarray)) else type(value).__name__
    shown = reprlib.repr(value) if isinstance(value, (list, np.ndarray, dict, bytes)) else repr(value)
    raise IngestError(f"{where}: {at(row)}, column {column.name!r}: {shown} is a {kind}: {expected}")


# An integer as integer and float columns write it: 7, -3, 7.0 (not 007, +7, 7e0: those stay text).
_INTEGER = r"-?(?:0|[1-9][0-9]*)(?:\.0+)?"


def _ids(column: pd.Series, where: str, at) -> pd.Series:
    """int64 where every id is an integer that fits, else str (see `Ratings` for the rule)."""
    _refuse_kind(column, where, at, "expected an integer or text id")
    missing = column.isna().to_numpy()
    if pd.api.types.is_integer_dtype(column.dtype) and not missing.any():
        if column.dtype != np.uint64 or column.max() <= np.iinfo(np.int64).max:
            return column.astype(np.int64)
        return column.astype(str)  # beyond int64: exact as text
    if pd.api.types.is_float_dtype(column.dtype) and not missing.any():
        values = column.to_numpy(dtype=np.float64)
        if np.isinf(values).any():
            row = int(np.argmax(np.isinf(values)))
            raise IngestError(f"{where}: {at(row)}, column {column.name!r}: {values[row]} is not finite: "
                              "expected an integer or text id")
        integral = np.isfinite(values) & (values == np.floor(values)) & (np.abs(values) < 2.0**63)
        if integral.all():
            return column.astype(np.int64)
        column = pd.Series([str(int(v)) if v.is_integer() else repr(v) for v in values.tolist()], name=column.name)
    text = column.astype(str).str.strip()
    empty = missing | (text == "").to_numpy()
    if empty.any():
        row = int(np.argmax(empty))
        raise IngestError(f"{where}: {at(row)}, column {column.name!r}: empty id: expected an id")
    integer = text.str.fullmatch(_INTEGER).to_numpy(dtype=bool)
    plain = text.str.replace(r"\.0+$", "", regex=True) if integer.any() else text
    if integer.all():
        try:  # arrow's parse: exact, and refuses (rather than wraps) what does not fit int64
            return pd.Series(pc.cast(pa.array(plain), pa.int64()).to_numpy(), name=column.name)
        except pa.ArrowInvalid:
            pass
    if integer.any():  # text column: integers in one plain form, so 7 and 7.0 stay one id
        text = text.where(~integer, plain.where(plain != "-0", "0"))
    return text.rename(column.name)


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
