"""Sources -> one validated, fingerprinted `Ratings` table.

Sources: MovieLens by name (`ml-100k` offline from the recbole wheel; the others from GroupLens,
checksum-verified and cached), a local ratings file (CSV, TSV, Parquet, GroupLens `u.data` /
`ratings.dat`, RecBole `.inter`), or `synthetic` low-rank data with a known noise floor.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.ratings import COLUMNS, IngestError, Ratings, validate
from pipeline.synthetic import synthetic, synthetic_options

__all__ = [
    "MOVIELENS",
    "IngestError",
    "Ratings",
    "cache_dir",
    "load",
    "movielens",
    "read_file",
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


def load(source: str | os.PathLike, **options) -> Ratings:
    """One entry point: a MovieLens name, `synthetic` (options inline for command lines:
    `synthetic:n_users=162541,n_items=59047,n_ratings=25000095`), or a path to a ratings file."""
    name = str(source)
    if name in MOVIELENS:
        return movielens(name, **options)
    if name == "synthetic" or name.startswith("synthetic:"):
        return synthetic(**synthetic_options(name), **options)
    if Path(name).exists() or any(sep in name for sep in "/\\") or Path(name).suffix:
        return read_file(name, **options)
    raise IngestError(
        f"unknown dataset {name!r}: expected one of {', '.join([*MOVIELENS, 'synthetic'])} "
        "or the path of a ratings file"
    )


# --- MovieLens -------------------------------------------------------------------------------


def movielens(name: str, path: str | os.PathLike | None = None, *, download: bool = True) -> Ratings:
    """MovieLens `name` from, in order: `path` (a GroupLens zip), the cache, for ml-100k the copy
    inside the installed `recbole` wheel, and last a GroupLens download (checksum-verified, cached)."""
    if name not in MOVIELENS:
        raise IngestError(f"unknown MovieLens dataset {name!r}: expected one of {', '.join(MOVIELENS)}")
    if path is not None:
        return _read_grouplens_zip(name, Path(path))
    cached = cache_dir() / f"{name}.zip"
    if cached.exists():
        return _read_grouplens_zip(name, cached)
    if name == "ml-100k" and (recbole := _recbole_ml100k()) is not None:
        return recbole
    if not download:
        raise IngestError(f"{name}: not in the cache ({cached}) and downloads are off")
    return _read_grouplens_zip(name, _download(name, cached))


def _recbole_ml100k() -> Ratings | None:
    """ml-100k as shipped in the recbole wheel (read as data: recbole itself is never imported)."""
    try:
        dist = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        return None
    inter = Path(dist.locate_file("recbole/dataset_example/ml-100k/ml-100k.inter"))
    if not inter.exists():
        return None
    ratings = read_file(inter, name="ml-100k", rating_scale=MOVIELENS["ml-100k"].scale)
    items = pd.read_csv(inter.with_suffix(".item"), sep="\t", usecols=[0, 1], dtype=str)
    titles = dict(zip(pd.to_numeric(items.iloc[:, 0]).tolist(), items.iloc[:, 1].tolist()))
    return ratings.replace(item_titles=titles)


def _download(name: str, target: Path) -> Path:
    """Fetch the zip into the cache atomically: verified first, renamed last, nothing left on failure."""
    url = f"{_GROUPLENS}{name}.zip"
    expected = MOVIELENS[name].md5
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            digest = hashlib.md5()
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
        if expected is None:
            with urllib.request.urlopen(url + ".md5", timeout=60) as response:
                expected = response.read().decode().split()[0]
        _check_md5(Path(url), digest.hexdigest(), expected)
        _read_grouplens_zip(name, Path(tmp))  # a zip that does not parse never enters the cache
        os.replace(tmp, target)
        return target
    except OSError as exc:
        raise IngestError(f"{url}: download failed ({exc})") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_md5(where: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise IngestError(f"{where}: checksum mismatch: md5 {actual}, expected {expected}")


def _read_grouplens_zip(name: str, path: Path) -> Ratings:
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
    ratings = _parse(io.BytesIO(data), spec.fmt, where, name=name, rating_scale=spec.scale)
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
    columns: dict[str, str] | None = None,
    rating_scale: tuple[float, float] | None = None,
    name: str | None = None,
) -> Ratings:
    """A local ratings file. Format by name: `.csv`, `.tsv`, `.parquet`, `.inter` (RecBole),
    `u.data` (GroupLens tab-separated, no header), `.dat` (GroupLens `::`-separated, no header).

    `columns` maps our names (user_id, item_id, rating, timestamp) to the file's, for headed files
    whose names are not recognised. `rating_scale` (low, high) defaults to the data's min and max.
    """
    path = Path(path)
    fmt = _format_of(path)
    try:
        source = io.BytesIO(path.read_bytes()) if fmt != "parquet" else path
    except OSError as exc:
        raise IngestError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    return _parse(source, fmt, str(path), name=name or path.stem, rating_scale=rating_scale, columns=columns)


def _format_of(path: Path) -> str:
    if path.name == "u.data" or path.suffix == ".data":
        return "u.data"
    formats = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".parquet": "parquet", ".pq": "parquet",
               ".inter": "inter", ".dat": "dat"}
    if path.suffix.lower() not in formats:
        raise IngestError(f"{path}: unknown ratings format {path.suffix!r}: expected one of "
                          f"{', '.join(sorted(formats))} or a file named u.data")
    return formats[path.suffix.lower()]


def _parse(source, fmt: str, where: str, *, name: str, rating_scale, columns=None) -> Ratings:
    """Read one table in `fmt`, map its columns, and validate it. `where` names it in errors."""
    headerless = fmt in ("u.data", "dat")
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(source)
        elif headerless:
            if fmt == "dat":  # '::' would force pandas' slow python engine: one byte separator instead
                source = io.BytesIO(source.getvalue().replace(b"::", b"\t"))
            frame = pd.read_csv(source, sep="\t", header=None, dtype=str, engine="c")
            if frame.shape[1] < 3:
                raise IngestError(f"{where}: line 1: expected user, item, rating[, timestamp] "
                                  f"separated by {'::' if fmt == 'dat' else 'tabs'}, found {frame.shape[1]} field(s)")
            frame = frame.iloc[:, :4].set_axis(list(COLUMNS[: min(4, frame.shape[1])]), axis=1)
        else:
            frame = pd.read_csv(source, sep="," if fmt == "csv" else "\t", dtype=str, engine="c")
    except pd.errors.EmptyDataError as exc:
        raise IngestError(f"{where}: empty file: expected a ratings table") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as exc:
        if isinstance(exc, IngestError):
            raise
        raise IngestError(f"{where}: cannot parse as {fmt} ({exc})") from exc
    if not headerless:
        frame = _rename(frame, columns or {}, where)
    # Headed text files: data row j sits on line j + 2; headerless ones on line j + 1.
    first_line = None if fmt == "parquet" else (1 if headerless else 2)
    return validate(frame, where, first_line, name=name, rating_scale=rating_scale)


def _rename(frame: pd.DataFrame, columns: dict[str, str], where: str) -> pd.DataFrame:
    unknown = set(columns) - set(COLUMNS)
    if unknown:
        raise IngestError(f"column mapping: unknown key(s) {sorted(unknown)}: expected {', '.join(COLUMNS)}")
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
                              "map yours with columns={...} (--columns on the command line)")
    keep = [c for c in COLUMNS if c in frame.columns]
    return frame[keep]
