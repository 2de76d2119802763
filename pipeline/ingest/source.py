"""`load`: which source a name means (MovieLens, synthetic, or a ratings file), and its options
checked against that source before anything is read; a user's side feature files, read and checked
before the ratings (nothing is fetched or written on bad input), then keyed like the ratings' ids."""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from pipeline.features import SideFeatures
from pipeline.ingest.files import _ALIASES, _line_numbers, read_file
from pipeline.ingest.grouplens import MOVIELENS, movielens
from pipeline.ratings import IngestError, Ratings, _ids
from pipeline.synthetic import synthetic, synthetic_options

__all__ = ["load", "read_features"]


def load(
    source: str | os.PathLike,
    *,
    rating_scale: tuple[float, float] | None = None,
    columns=None,
    sep: str | None = None,
    header: bool | None = None,
    user_features: str | os.PathLike | None = None,
    item_features: str | os.PathLike | None = None,
    **options,
) -> Ratings:
    """One entry point: a MovieLens name, `synthetic` (options inline for command lines:
    `synthetic:n_users=162541,n_items=59047,n_ratings=25000095`), or a path to a ratings file.

    `rating_scale` (low, high) is declared: a rating outside it is an error. Undeclared, it is
    MovieLens's own scale, synthetic's (1, 5), or a file's min and max. `columns`, `sep`, `header`:
    how to read a ratings file (see `read_file`); `options`: `movielens`'s or `synthetic`'s.
    `user_features` / `item_features`: a CSV/TSV of that side's features (see `read_features`);
    it replaces the source's own (ml-100k has both sides).
    """
    tables = [read_features(path, side) for side, path in (("user", user_features), ("item", item_features))
              if path is not None]
    ratings = _ratings(str(source), rating_scale, {"columns": columns, "sep": sep, "header": header}, options)
    for table in tables:
        ratings = ratings.replace(**{f"{table.side}_features": table.keyed(ratings)})
    return ratings


def _ratings(name: str, rating_scale, file_options: dict, options: dict) -> Ratings:
    """The ratings of `load`'s source (`file_options`: the reader's, None when not given)."""
    file_options = {k: v for k, v in file_options.items() if v is not None}
    scale = {} if rating_scale is None else {"rating_scale": rating_scale}
    if name in MOVIELENS or name == "synthetic" or name.startswith("synthetic:"):
        if file_options:
            raise IngestError(f"{name}: reader option(s) {', '.join(file_options)} are for ratings files; "
                              f"{name}'s layout is known")
        if name in MOVIELENS:
            return movielens(name, **scale, **options)
        return synthetic(**synthetic_options(name), **scale, **options)
    if Path(name).exists() or any(s in name for s in "/\\") or Path(name).suffix:
        unknown = sorted(set(options) - {"name"})
        if unknown:
            raise IngestError(f"{name}: option(s) {', '.join(unknown)} are for MovieLens or synthetic, "
                              "not a ratings file")
        return read_file(name, **scale, **file_options, **options)
    raise IngestError(
        f"unknown dataset {name!r}: expected one of {', '.join([*MOVIELENS, 'synthetic'])} "
        "or the path of a ratings file"
    )


_KEYS = {"user": "user_id", "item": "item_id"}
_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}


@dataclass(frozen=True, eq=False)
class FeatureTable:
    """A side's feature file, read and checked: `keys` (distinct ids, read as `Ratings` reads ids),
    `columns` {group: text per row} (no empty cell); `at(row)` names a row's line."""

    side: str
    where: str
    key: str
    keys: pd.Series
    columns: dict[str, list[str]]
    at: Callable[[int], str]

    def keyed(self, ratings: Ratings) -> SideFeatures:
        """The features keyed as the ratings' ids of this side (int64 or text; integer keys for text
        ids are matched as text): a key that is not an integer for integer ids is an error."""
        keys = self.keys
        if pd.api.types.is_integer_dtype(ratings.frame[_KEYS[self.side]].dtype):
            if not pd.api.types.is_integer_dtype(keys.dtype):
                row = next(r for r, k in enumerate(keys) if not _int64(k))
                raise IngestError(f"{self.where}: {self.at(row)}, column {self.key!r}: {keys.iloc[row]!r} is not an "
                                  f"integer: the ratings' {self.side} ids are integers: expected an integer id")
        else:
            keys = keys.astype(str)
        return SideFeatures.build(keys.to_numpy(), self.columns)


def read_features(path: str | os.PathLike, side: str) -> FeatureTable:
    """A user's feature file for `side` ("user" or "item"): CSV (`.csv`) or TSV (`.tsv`, `.txt`)
    with a header; the key column `user_id` / `item_id` (or a name `read_file` knows for it, e.g.
    movieId), else the first column; every other column is a group: multi-valued if a value holds
    `|` (split on it), numeric if every value is a number (bucketed by quantiles), else categorical.
    Every cell needs a value. Errors name the file, line and column."""
    path = Path(path)
    sep = _SEPARATORS.get(path.suffix.lower())
    if sep is None:
        raise IngestError(f"{path}: unknown {side} features format {path.suffix!r}: expected .csv, .tsv or .txt "
                          f"(a header, then one row per {side})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IngestError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    frame, names = _table(data, str(path), sep, side)
    lines = _line_numbers(data, len(frame), True)

    def at(row: int) -> str:
        return f"row {row}" if lines is None else f"line {lines + row if isinstance(lines, int) else lines[row]}"

    key = _key_column(names, str(path), side)
    columns = {}
    for position, name in enumerate(names):
        text = frame.iloc[:, position]
        missing = (text.isna() | (text.fillna("").str.strip() == "")).to_numpy()
        if missing.any() and name != key:
            raise IngestError(f"{path}: {at(int(missing.argmax()))}, column {name!r}: missing value: expected a "
                              "value, or drop the column")
        if name != key:
            columns[name] = text.str.strip().tolist()
    keys = _ids(frame.iloc[:, names.index(key)].rename(key), str(path), at)
    repeated = keys.duplicated().to_numpy()
    if repeated.any():
        row = int(repeated.argmax())
        first = int((keys == keys.iloc[row]).to_numpy().argmax())
        raise IngestError(f"{path}: {at(row)}, column {key!r}: {str(keys.iloc[row])!r} again (first on {at(first)}): "
                          f"expected one row per {side}")
    return FeatureTable(side, str(path), key, keys, columns, at)


def _table(data: bytes, where: str, sep: str, side: str) -> tuple[pd.DataFrame, list[str]]:
    """The file as str columns and its header's names as written; its shape checked."""
    def read(**options) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(data), sep=sep, dtype=str, keep_default_na=False, engine="c", **options)

    try:
        frame = read(header=0)
        names = [n.strip() if isinstance(n, str) else "" for n in read(header=None, nrows=1).iloc[0]]
    except pd.errors.EmptyDataError as exc:
        raise IngestError(f"{where}: empty file: expected a header, then one row per {side}") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise IngestError(f"{where}: cannot parse ({str(exc).strip()})") from exc
    repeated = next((n for n in names if names.count(n) > 1), None)
    if repeated is not None or "" in names:
        what = f"column {repeated!r} appears twice" if repeated is not None else "a column has no name"
        raise IngestError(f"{where}: line 1: {what}: expected each column named once")
    if not isinstance(frame.index, pd.RangeIndex):
        raise IngestError(f"{where}: a row has more fields than the header's {len(names)}: expected one per name")
    if len(names) < 2 or not len(frame):
        raise IngestError(f"{where}: {'no rows' if len(names) > 1 else 'no feature column'}: expected a header "
                          f"({_KEYS[side]}, then one column per feature) and one row per {side}")
    return frame, names


def _key_column(names: list[str], where: str, side: str) -> str:
    """The key column: the one named for this side's ids (user_id, userId, ...), else the first,
    unless that one names the other side's ids."""
    def named(n: str, s: str) -> bool:
        return _ALIASES.get(n.split(":")[0].lower()) == _KEYS[s]

    found = [n for n in names if named(n, side)]
    if len(found) > 1:
        raise IngestError(f"{where}: line 1: columns {' and '.join(map(repr, found))} are both {_KEYS[side]}: "
                          "expected one key column")
    other = "item" if side == "user" else "user"
    if not found and named(names[0], other):
        raise IngestError(f"{where}: line 1, column {names[0]!r}: the {other} key in {side} features: expected a "
                          f"{_KEYS[side]} column (or the {side} ids in the first column)")
    return found[0] if found else names[0]


def _int64(key: str) -> bool:
    """Whether a text id is an integer that fits int64 (what the ratings' integer ids are)."""
    return re.fullmatch(r"-?(?:0|[1-9][0-9]*)", key) is not None and -2**63 <= int(key) < 2**63
