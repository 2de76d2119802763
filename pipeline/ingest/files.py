"""Reading a user's ratings file: CSV, TSV, Parquet, GroupLens `u.data` / `ratings.dat`, RecBole
`.inter`; its columns found by name (or by position without a header), its lines counted so that
an error names the file's line. The GroupLens archives are parsed through `parse` too.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline.ingest.flags import check_sep, column_map
from pipeline.ratings import COLUMNS, IngestError, Ratings, validate

__all__ = ["parse", "read_file"]

# Column names seen in the wild, mapped to ours (lower-cased, RecBole `:type` suffix removed).
_ALIASES = {
    "user_id": "user_id", "userid": "user_id", "user": "user_id", "uid": "user_id",
    "item_id": "item_id", "itemid": "item_id", "item": "item_id", "movieid": "item_id",
    "movie_id": "item_id", "iid": "item_id",
    "rating": "rating", "score": "rating", "stars": "rating",
    "timestamp": "timestamp", "time": "timestamp", "ts": "timestamp",
}


def read_file(
    path: str | os.PathLike,
    *,
    columns=None,
    sep: str | None = None,
    header: bool | None = None,
    rating_scale: tuple[float, float] | None = None,
    name: str | None = None,
) -> Ratings:
    """A local ratings file. Format by name: `.csv`, `.tsv`, `.parquet`, `.inter` (RecBole),
    `u.data` (GroupLens tab-separated, no header), `.dat` (GroupLens `::`-separated, no header).

    `columns` maps our names (user_id, item_id, rating, timestamp) to the file's, for headed files
    whose names are not recognised: each must name a column of the file, and it wins over the names
    recognised (rating=stars: a `rating` column is then not read); two columns recognised as one
    field, or a repeated header name, is an error. For a file without a header, its keys (or a list
    of our names) name the fields in order (default: user_id, item_id, rating[, timestamp]). `sep`
    overrides the format's separator (any literal string); `header=False` reads the first line as data.
    `rating_scale` (low, high) is declared: a rating outside it is an error; by default the data's
    min and max. Ids: integers or text; timestamps: seconds since the epoch or datetimes, stored
    as int64 seconds (`Ratings`). Errors name the file's line (blank lines counted).
    """
    path = Path(path)
    fmt = _format_of(path)
    if fmt == "parquet" and (sep is not None or header is not None):
        raise IngestError(f"{path}: sep and header apply to text files; this one is parquet")
    try:
        source = path.read_bytes() if fmt != "parquet" else path
    except OSError as exc:
        raise IngestError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return parse(source, fmt, str(path), name=name or path.stem, rating_scale=rating_scale, columns=columns,
                 sep=sep, header=header)


_SEPARATORS = {"csv": ",", "tsv": "\t", "inter": "\t", "u.data": "\t", "dat": "::"}


def _format_of(path: Path) -> str:
    if path.name == "u.data" or path.suffix == ".data":
        return "u.data"
    formats = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet",
               ".inter": "inter", ".dat": "dat"}
    if path.suffix.lower() not in formats:
        raise IngestError(f"{path}: unknown ratings format {path.suffix!r}: expected one of "
                          f"{', '.join(sorted(formats))} or a file named u.data")
    return formats[path.suffix.lower()]


def parse(source, fmt: str, where: str, *, name: str, rating_scale, columns=None, sep=None, header=None) -> Ratings:
    """Read one table in `fmt` (`source`: the file's bytes, or a parquet path), map its columns,
    and validate it. `where` names it in errors."""
    columns = None if columns is None else column_map(columns)
    if fmt == "parquet":
        return validate(_read_parquet(source, columns or {}, where), where, None, name=name, rating_scale=rating_scale)
    sep = _SEPARATORS[fmt] if sep is None else check_sep(sep)
    headed = fmt not in ("u.data", "dat") if header is None else header
    read_sep = sep
    if len(sep) > 1:  # a longer separator would force pandas' slow python engine: one byte instead
        source, read_sep = source.replace(sep.encode(), b"\x1f"), "\x1f"
    frame, lines, names = _read_text(source, fmt, where, read_sep, headed)
    if headed:
        picks = _pick(names, columns or {}, where)
        frame = frame.iloc[:, list(picks.values())].set_axis(list(picks), axis=1)
    else:
        frame = _positional(frame, columns, where, sep, lines)
    return validate(frame, where, lines, name=name, rating_scale=rating_scale)


def _read_text(source: bytes, fmt: str, where: str, sep: str, headed: bool):
    """(the table as str columns, `_line_numbers`, the header's names as written: None without one).
    pandas renames a repeated header name (`rating.1`): the names are read again as they are."""
    def read(**options) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(source), sep=sep, dtype=str, engine="c", **options)

    try:
        frame = read(header=0 if headed else None)
        names = [n if isinstance(n, str) else "" for n in read(header=None, nrows=1).iloc[0]] if headed else None
    except pd.errors.EmptyDataError as exc:
        raise IngestError(f"{where}: empty file: expected a ratings table") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise IngestError(f"{where}: cannot parse as {fmt} ({exc})") from exc
    lines = _line_numbers(source, len(frame), headed)
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took the fields beyond the header as an index
        first = "row 0" if lines is None else f"line {lines if isinstance(lines, int) else lines[0]}"
        raise IngestError(f"{where}: {first}: {frame.shape[1] + frame.index.nlevels} fields under a header of "
                          f"{frame.shape[1]}: expected one field per header name")
    return frame, lines, names


def _read_parquet(path, columns: dict[str, str], where: str) -> pd.DataFrame:
    """Only the columns `_pick` chooses, found in the file's schema first (pandas refuses a file
    that repeats a column name, even one that is not read). A column pandas wrote as the index
    counts: a range index (`set_index("user_id")` on 1..n) is only a line of pandas' metadata."""
    try:
        schema = pq.read_schema(path)
        ranges = [c["name"] for c in (schema.pandas_metadata or {}).get("index_columns", [])
                  if isinstance(c, dict) and isinstance(c.get("name"), str)]
        names = schema.names + ranges
        picks = _pick(names, columns, where)
        wanted = [names[i] for i in picks.values()]
        frame = pd.read_parquet(path, columns=[n for n in wanted if n in schema.names])
    except IngestError:
        raise
    except (ValueError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise IngestError(f"{where}: cannot parse as parquet ({exc})") from exc
    if set(frame.index.names) & set(wanted):
        frame = frame.reset_index()
    return frame[wanted].reset_index(drop=True).set_axis(list(picks), axis=1)


def _line_numbers(data: bytes, rows: int, headed: bool) -> int | np.ndarray | None:
    """The file line (1-based) of each parsed row: pandas skips blank lines, the numbers do not.
    An int (the first row's line) when there is no blank line; None when the rows do not map onto
    lines (a quoted field spanning lines): errors then name rows."""
    first = 2 if headed else 1
    if not (data.startswith((b"\n", b"\r\n")) or b"\n\n" in data or b"\n\r\n" in data):
        return first
    text = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(text == ord("\n"))
    starts = np.concatenate([[0], ends + 1])
    length = np.concatenate([ends, [len(text)]]) - starts
    blank = (length == 0) | ((length == 1) & (text[np.minimum(starts, len(text) - 1)] == ord("\r")))
    lines = np.flatnonzero(~blank) + 1
    lines = lines[1:] if headed else lines
    return lines[:rows] if len(lines) == rows else None


def _positional(frame: pd.DataFrame, columns: dict | None, where: str, sep: str, lines) -> pd.DataFrame:
    """A headerless table's fields named in order: `columns`' keys, else user, item, rating[, timestamp]."""
    names = list(columns) if columns else list(COLUMNS[: max(3, min(4, frame.shape[1]))])
    missing = [c for c in ("user_id", "item_id", "rating") if c not in names]
    if missing:
        raise IngestError(f"columns {names}: missing {missing}: a file without a header needs "
                          "user_id, item_id and rating among its fields (in the file's order)")
    if frame.shape[1] < len(names):
        first = "line 1" if lines is None else f"line {lines if isinstance(lines, int) else lines[0]}"
        shown = "tabs" if sep == "\t" else repr(sep)
        raise IngestError(f"{where}: {first}: expected {', '.join(names)} separated by {shown}, "
                          f"found {frame.shape[1]} field(s)")
    return frame.iloc[:, : len(names)].set_axis(names, axis=1)


def _pick(names: list[str], columns: dict[str, str], where: str) -> dict[str, int]:
    """Our names -> positions in the header `names`. `columns` (ours -> theirs) first: each must
    name a column of the file, and it wins (the file's own `rating` is not read when
    rating=stars). The fields it leaves are found by the aliases, among the other columns; two
    columns read as one field, or a name the header repeats, is an error."""
    for ours, theirs in columns.items():
        if theirs not in names:
            raise IngestError(f"{where}: --columns {ours}={theirs}: the file has no column {theirs!r}: "
                              f"its columns are {names} (columns={{...}} in Python)")
    found = {ours: [theirs] for ours, theirs in columns.items()}
    for name in names:
        ours = _ALIASES.get(name.split(":")[0].strip().lower())
        if ours is not None and ours not in columns and name not in columns.values():
            found.setdefault(ours, []).append(name)
    for name in (n for candidates in found.values() for n in candidates):
        if names.count(name) > 1:
            raise IngestError(f"{where}: column {name!r} appears {names.count(name)} times in the header: "
                              "expected each column named once")
    for ours, candidates in found.items():
        if len(candidates) > 1:
            raise IngestError(f"{where}: columns {' and '.join(map(repr, candidates))} are both {ours}: "
                              f"choose one with --columns {ours}=NAME (columns={{...}} in Python)")
    _check_picked(found, columns, names, where)
    return {ours: names.index(found[ours][0]) for ours in COLUMNS if ours in found}


def _check_picked(found: dict[str, list[str]], columns: dict[str, str], names: list[str], where: str) -> None:
    """Every field we need has a column, and no column serves two fields."""
    shared = [theirs for theirs in set(columns.values()) if list(columns.values()).count(theirs) > 1]
    if shared:
        both = ",".join(f"{ours}={theirs}" for ours, theirs in columns.items() if theirs == shared[0])
        raise IngestError(f"{where}: --columns {both}: one column for two fields: expected a column each")
    for col in ("user_id", "item_id", "rating"):
        if col not in found:
            raise IngestError(f"{where}: missing column {col!r}: found {names}; "
                              "name yours with --columns user_id=NAME,item_id=NAME,rating=NAME "
                              "(columns={...} in Python; --no-header if the first line is data)")
