"""Sources -> one validated, fingerprinted `Ratings` table.

Sources: MovieLens by name (`ml-100k` offline from the recbole wheel; the others from GroupLens,
checksum-verified and cached), a local ratings file (CSV, TSV, Parquet, GroupLens `u.data` /
`ratings.dat`, RecBole `.inter`), or `synthetic` low-rank data with a known noise floor.
`add_source_flags` / `source_options`: the flags that describe a source, shared by every command.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import io
import os
import socket
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.ratings import COLUMNS, IngestError, Ratings, check_scale, validate
from pipeline.synthetic import synthetic, synthetic_options

__all__ = [
    "MOVIELENS",
    "IngestError",
    "Ratings",
    "add_source_flags",
    "cache_dir",
    "load",
    "movielens",
    "read_file",
    "source_options",
    "synthetic",
]

# GroupLens archives: the ratings member (found by file name), its format, the titles member, the
# rating scale, and the md5 GroupLens publishes beside each zip (`<url>.md5`). ml-32m and
# ml-latest-small are checked against that published file at download time instead of a pin
# (ml-latest-small changes over time).
_GROUPLENS = "https://files.grouplens.org/datasets/movielens/"


@dataclass(frozen=True)
class _Archive:
    ratings: str
    fmt: str
    titles: str
    scale: tuple[float, float]
    md5: str | None


MOVIELENS: dict[str, _Archive] = {
    "ml-100k": _Archive("u.data", "u.data", "u.item", (1.0, 5.0), "0e33842e24a9c977be4e0107933c0723"),
    "ml-1m": _Archive("ratings.dat", "dat", "movies.dat", (1.0, 5.0), "c4d9eecfca2ab87c1945afe126590906"),
    "ml-10m": _Archive("ratings.dat", "dat", "movies.dat", (0.5, 5.0), "ce571fd55effeba0271552578f2648bd"),
    "ml-20m": _Archive("ratings.csv", "csv", "movies.csv", (0.5, 5.0), "cd245b17a1ae2cc31bb14903e1204af3"),
    "ml-25m": _Archive("ratings.csv", "csv", "movies.csv", (0.5, 5.0), "6b51fb2759a8657d3bfcbfc42b592ada"),
    "ml-32m": _Archive("ratings.csv", "csv", "movies.csv", (0.5, 5.0), None),
    "ml-latest-small": _Archive("ratings.csv", "csv", "movies.csv", (0.5, 5.0), None),
}

# Column names seen in the wild, mapped to ours (lower-cased, RecBole `:type` suffix removed).
_ALIASES = {
    "user_id": "user_id", "userid": "user_id", "user": "user_id", "uid": "user_id",
    "item_id": "item_id", "itemid": "item_id", "item": "item_id", "movieid": "item_id",
    "movie_id": "item_id", "iid": "item_id",
    "rating": "rating", "score": "rating", "stars": "rating",
    "timestamp": "timestamp", "time": "timestamp", "ts": "timestamp",
}


def cache_dir() -> Path:
    """Where verified downloads live: $PIPELINE_CACHE, else ~/.cache/pipeline."""
    return Path(os.environ.get("PIPELINE_CACHE", Path.home() / ".cache" / "pipeline"))


def load(
    source: str | os.PathLike,
    *,
    rating_scale: tuple[float, float] | None = None,
    columns=None,
    sep: str | None = None,
    header: bool | None = None,
    **options,
) -> Ratings:
    """One entry point: a MovieLens name, `synthetic` (options inline for command lines:
    `synthetic:n_users=162541,n_items=59047,n_ratings=25000095`), or a path to a ratings file.

    `rating_scale` (low, high) is declared: a rating outside it is an error. Undeclared, it is
    MovieLens's own scale, synthetic's (1, 5), or a file's min and max. `columns`, `sep`, `header`:
    how to read a ratings file (see `read_file`); `options`: `movielens`'s or `synthetic`'s.
    """
    name = str(source)
    file_options = {k: v for k, v in (("columns", columns), ("sep", sep), ("header", header)) if v is not None}
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


def add_source_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that describe a source beyond its name (`source_options` reads them back; a flag
    not given sets no attribute)."""
    group = parser.add_argument_group("ratings source", argument_default=argparse.SUPPRESS)
    group.add_argument("--rating-scale", type=_flag(_scale_of), metavar="LOW,HIGH",
                       help="declared rating scale, e.g. 1,5 (=-10,10 for a negative low); a rating outside "
                            "it is an error (default: MovieLens's own, else the file's min and max)")
    group.add_argument("--columns", type=_flag(_columns_of), metavar="OURS=THEIRS,...",
                       help="a file's column names, e.g. user_id=userId,item_id=movieId,rating=stars; "
                            "with --no-header, our names in the file's field order, e.g. item_id,user_id,rating")
    group.add_argument("--sep", type=_flag(_check_sep), help="a text file's field separator, e.g. ';' or "
                       "'\\t' (default: by the file name: .csv comma, .tsv tab, .dat ::)")
    group.add_argument("--no-header", dest="header", action="store_const", const=False,
                       help="the file's first line is data (fields: --columns order, else "
                            "user_id,item_id,rating[,timestamp])")


def source_options(values) -> dict:
    """`load`'s keywords from what `add_source_flags` parsed (an argparse Namespace or any object
    with those attributes): only those given."""
    return {key: getattr(values, key) for key in ("rating_scale", "columns", "sep", "header")
            if getattr(values, key, None) is not None}


def _flag(check):
    """An argparse `type` from one of this module's checks (its IngestError -> a usage error)."""
    def convert(text: str):
        try:
            return check(text)
        except IngestError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = check.__name__.strip("_")
    return convert


def _scale_of(text: str) -> tuple[float, float]:
    """`1,5` -> (1.0, 5.0)."""
    return check_scale(text.split(","))


# --- MovieLens -------------------------------------------------------------------------------


def movielens(
    name: str,
    path: str | os.PathLike | None = None,
    *,
    download: bool = True,
    rating_scale: tuple[float, float] | None = None,
) -> Ratings:
    """MovieLens `name` from, in order: `path` (a GroupLens zip), the cache, for ml-100k the copy
    inside the installed `recbole` wheel, and last a GroupLens download (checksum-verified, cached).
    `rating_scale`: a declared scale instead of the dataset's own."""
    if name not in MOVIELENS:
        raise IngestError(f"unknown MovieLens dataset {name!r}: expected one of {', '.join(MOVIELENS)}")
    scale = MOVIELENS[name].scale if rating_scale is None else check_scale(rating_scale)
    if path is not None:
        return _read_grouplens_zip(name, Path(path), scale)
    cached = cache_dir() / f"{name}.zip"
    _sweep_partials(cached.parent)
    if cached.exists():
        return _read_grouplens_zip(name, cached, scale)
    if name == "ml-100k" and (recbole := _recbole_ml100k(scale)) is not None:
        return recbole
    if not download:
        raise IngestError(f"{name}: not in the cache ({cached}) and downloads are off")
    return _read_grouplens_zip(name, _download(name, cached), scale)


def _recbole_ml100k(scale: tuple[float, float]) -> Ratings | None:
    """ml-100k as shipped in the recbole wheel (read as data: recbole itself is never imported)."""
    try:
        dist = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        return None
    inter = Path(dist.locate_file("recbole/dataset_example/ml-100k/ml-100k.inter"))
    if not inter.exists():
        return None
    ratings = read_file(inter, name="ml-100k", rating_scale=scale)
    items = pd.read_csv(inter.with_suffix(".item"), sep="\t", usecols=[0, 1, 2], dtype=str, keep_default_na=False)
    # "Toy Story (1995)", as GroupLens's own u.item writes it (two films may share a title)
    named = [f"{title} ({year})" if year.isdigit() else title for title, year in zip(items.iloc[:, 1], items.iloc[:, 2])]
    titles = dict(zip(pd.to_numeric(items.iloc[:, 0]).tolist(), named))
    return ratings.replace(item_titles=titles)


# A partial download is `.<name>.<host>.<pid>.part` beside its target, so that a later process can
# tell whose it is: one whose writer died (SIGKILL leaves no chance to clean up) or that has not
# been written to for this long is abandoned, and removed by the next process that looks.
_ABANDONED_AFTER = 3600.0


def _download(name: str, target: Path) -> Path:
    """Fetch the zip into the cache atomically: verified first, renamed last, nothing left on failure."""
    url = f"{_GROUPLENS}{name}.zip"
    expected = MOVIELENS[name].md5
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{name}.{socket.gethostname()}.{os.getpid()}.part"
    try:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            digest = hashlib.md5()
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
        if expected is None:
            with urllib.request.urlopen(url + ".md5", timeout=60) as response:
                expected = response.read().decode().split()[0]
        _check_md5(url, digest.hexdigest(), expected)
        _read_grouplens_zip(name, tmp, MOVIELENS[name].scale)  # a zip that does not parse never enters the cache
        os.replace(tmp, target)
        return target
    except OSError as exc:
        raise IngestError(f"{url}: download failed ({exc})") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _sweep_partials(folder: Path) -> None:
    """Remove this module's abandoned partial downloads in `folder` (see `_ABANDONED_AFTER`)."""
    try:
        partials = list(folder.glob(".*.part"))
    except OSError:
        return
    host, now = socket.gethostname(), time.time()
    for path in partials:
        stem = path.name[1 : -len(".part")]
        name = next((n for n in MOVIELENS if stem.startswith(n + ".")), None)
        if name is None:
            continue  # not ours
        owner, _, pid = stem[len(name) + 1 :].rpartition(".")
        try:
            idle = now - path.stat().st_mtime
        except OSError:
            continue
        dead = owner == host and pid.isdigit() and not _alive(int(pid))
        if dead or idle > _ABANDONED_AFTER:
            with contextlib.suppress(OSError):
                path.unlink()


def _alive(pid: int) -> bool:
    """Whether process `pid` of this machine exists (on Windows, assumed: there age decides)."""
    if os.name == "nt" or pid <= 0:
        return True
    try:
        os.kill(pid, 0)  # signal 0: a probe, nothing is sent
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _check_md5(url: str, actual: str, expected: str) -> None:
    if actual != expected:
        raise IngestError(f"{url}: checksum mismatch: md5 {actual}, expected {expected}")


def _read_grouplens_zip(name: str, path: Path, scale: tuple[float, float]) -> Ratings:
    spec = MOVIELENS[name]
    try:
        with zipfile.ZipFile(path) as archive:
            members = {Path(m).name: m for m in archive.namelist()}
            if spec.ratings not in members:
                raise IngestError(f"{path}: no {spec.ratings} inside (is this the {name} zip?)")
            data = archive.read(members[spec.ratings])
            titles = archive.read(members[spec.titles]) if spec.titles in members else None
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise IngestError(f"{path}: truncated or corrupt zip ({exc}); delete it and fetch it again") from exc
    except OSError as exc:
        raise IngestError(f"{path}: cannot read ({exc})") from exc
    where = f"{path}:{spec.ratings}"
    ratings = _parse(data, spec.fmt, where, name=name, rating_scale=scale)
    return ratings.replace(item_titles=_parse_titles(titles, spec.fmt) if titles else {})


def _parse_titles(data: bytes, fmt: str) -> dict:
    if fmt == "u.data":  # u.item: id|title|date|...
        frame = pd.read_csv(io.BytesIO(data), sep="|", header=None, usecols=[0, 1], encoding="latin-1")
    elif fmt == "dat":  # movies.dat: id::title::genres
        text = data.replace(b"::", b"\t")
        frame = pd.read_csv(io.BytesIO(text), sep="\t", header=None, usecols=[0, 1], encoding="latin-1",
                            quoting=3)
    else:
        frame = pd.read_csv(io.BytesIO(data), usecols=[0, 1])
    return dict(zip(frame.iloc[:, 0].tolist(), frame.iloc[:, 1].tolist()))


# --- files -----------------------------------------------------------------------------------


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
    whose names are not recognised; for a file without a header, its keys (or a list of our names)
    name the fields in order (default: user_id, item_id, rating[, timestamp]). `sep` overrides the
    format's separator (any literal string); `header=False` reads the first line as data.
    `rating_scale` (low, high) is declared: a rating outside it is an error; by default the data's
    min and max. Errors name the file's line (blank lines counted).
    """
    path = Path(path)
    fmt = _format_of(path)
    if fmt == "parquet" and (sep is not None or header is not None):
        raise IngestError(f"{path}: sep and header apply to text files; this one is parquet")
    try:
        source = path.read_bytes() if fmt != "parquet" else path
    except OSError as exc:
        raise IngestError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return _parse(source, fmt, str(path), name=name or path.stem, rating_scale=rating_scale, columns=columns,
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


def _check_sep(sep: str) -> str:
    """A literal field separator (`\\t` on a command line is a tab)."""
    sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)
    if not sep or any(c in sep for c in "\r\n\"\x1f"):
        raise IngestError(f"sep {sep!r}: expected a non-empty separator without quotes or line breaks")
    return sep


def _columns_of(columns) -> dict[str, str]:
    """`columns` as {our name: the file's}, in order: a mapping, a list of our names, or the
    command line's `user_id=userId,item_id=movieId` (a bare name maps to itself)."""
    if isinstance(columns, str):
        pairs = [(k.strip(), v.strip() or k.strip()) for k, _, v in (e.partition("=") for e in columns.split(","))]
        columns = dict(pairs)
    elif not isinstance(columns, dict):
        columns = {str(c): str(c) for c in columns}
    unknown = [k for k in columns if k not in COLUMNS]
    if unknown:
        raise IngestError(f"columns: unknown name(s) {unknown}: expected ours, among {', '.join(COLUMNS)} "
                          "(e.g. user_id=userId,item_id=movieId,rating=stars)")
    return {k: str(v) for k, v in columns.items()}


def _parse(source, fmt: str, where: str, *, name: str, rating_scale, columns=None, sep=None, header=None) -> Ratings:
    """Read one table in `fmt` (`source`: the file's bytes, or a parquet path), map its columns,
    and validate it. `where` names it in errors."""
    columns = None if columns is None else _columns_of(columns)
    if fmt == "parquet":
        headed, lines = True, None
    else:
        sep = _SEPARATORS[fmt] if sep is None else _check_sep(sep)
        headed = fmt not in ("u.data", "dat") if header is None else header
        read_sep = sep
        if len(sep) > 1:  # a longer separator would force pandas' slow python engine: one byte instead
            source, read_sep = source.replace(sep.encode(), b"\x1f"), "\x1f"
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(source)
        else:
            frame = pd.read_csv(io.BytesIO(source), sep=read_sep, header=0 if headed else None, dtype=str, engine="c")
            lines = _line_numbers(source, len(frame), headed)
    except pd.errors.EmptyDataError as exc:
        raise IngestError(f"{where}: empty file: expected a ratings table") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        raise IngestError(f"{where}: cannot parse as {fmt} ({exc})") from exc
    if headed:
        frame = _rename(frame, columns or {}, where)
    else:
        frame = _positional(frame, columns, where, sep, lines)
    return validate(frame, where, lines, name=name, rating_scale=rating_scale)


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


def _rename(frame: pd.DataFrame, columns: dict[str, str], where: str) -> pd.DataFrame:
    mapping = {theirs: ours for ours, theirs in columns.items()}
    for col in frame.columns:
        key = str(col).split(":")[0].strip().lower()
        if col not in mapping and key in _ALIASES and _ALIASES[key] not in mapping.values():
            mapping[col] = _ALIASES[key]
    frame = frame.rename(columns=mapping)
    for col in ("user_id", "item_id", "rating"):
        if col not in frame.columns:
            wanted = columns.get(col, col)
            raise IngestError(f"{where}: missing column {wanted!r}: found {list(map(str, frame.columns))}; "
                              "name yours with --columns user_id=NAME,item_id=NAME,rating=NAME "
                              "(columns={...} in Python; --no-header if the first line is data)")
    keep = [c for c in COLUMNS if c in frame.columns]
    return frame[keep]
