"""MovieLens by name: the GroupLens archives (checksum-verified downloads, kept in a cache that
survives killed processes), and ml-100k offline from the recbole wheel.

ml-100k comes with side features from both carriers (users: age, gender, occupation, zip; items:
release year, genres); the other archives carry none here (yet).
"""

from __future__ import annotations

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

from pipeline.features import Rule, SideFeatures
from pipeline.ingest.files import parse, read_file
from pipeline.ratings import IngestError, Ratings, check_scale

__all__ = ["MOVIELENS", "cache_dir", "movielens"]

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


def cache_dir() -> Path:
    """Where verified downloads live: $PIPELINE_CACHE, else ~/.cache/pipeline."""
    return Path(os.environ.get("PIPELINE_CACHE", Path.home() / ".cache" / "pipeline"))


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
    items = pd.read_csv(inter.with_suffix(".item"), sep="\t", dtype=str, keep_default_na=False)
    users = pd.read_csv(inter.with_suffix(".user"), sep="\t", dtype=str, keep_default_na=False)
    # "Toy Story (1995)", as GroupLens's own u.item writes it (two films may share a title)
    named = [f"{title} ({year})" if year.isdigit() else title for title, year in zip(items.iloc[:, 1], items.iloc[:, 2])]
    titles = dict(zip(pd.to_numeric(items.iloc[:, 0]).tolist(), named))
    genres = ["|".join(g.split()) for g in items.iloc[:, 3]]  # recbole: space-separated
    return ratings.replace(item_titles=titles, user_features=ml100k_users(users.iloc[:, :5]),
                           item_features=ml100k_items(items.iloc[:, 0], items.iloc[:, 2], genres))


# ML-1M's age groups (under 18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+) over ml-100k's exact ages.
AGE_EDGES = (18.0, 25.0, 35.0, 45.0, 50.0, 56.0)
# u.item's 19 genre flag columns, in order (recbole's `class` uses the same names).
GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")


def ml100k_users(users: pd.DataFrame) -> SideFeatures:
    """ml-100k's users (text columns: id, age, gender, occupation, zip code) -> groups age (ML-1M's
    7 groups), gender, occupation, zip (its first character: a US region, or a Canadian province)."""
    ids = users.iloc[:, 0].astype(np.int64).to_numpy()
    columns = dict(zip(("age", "gender", "occupation", "zip"), (users.iloc[:, k].tolist() for k in range(1, 5))))
    return SideFeatures.build(ids, columns, {"age": Rule("numeric", AGE_EDGES), "gender": Rule("categorical"),
                                             "occupation": Rule("categorical"), "zip": Rule("categorical", prefix=1)})


def ml100k_items(ids: pd.Series, years, genres: list[str]) -> SideFeatures:
    """ml-100k's items -> groups release_year (by decade, from the data's first to its last; a year
    that is not one, e.g. "unknown", gives none) and genre (multi-valued; `genres`: "|"-joined)."""
    years = [y if y.isdigit() else None for y in years]
    known = [int(y) for y in years if y is not None]
    edges = tuple(float(d) for d in range(min(known) // 10 * 10 + 10, max(known) // 10 * 10 + 1, 10))
    return SideFeatures.build(ids.astype(np.int64).to_numpy(), {"release_year": years, "genre": genres},
                              {"release_year": Rule("numeric", edges), "genre": Rule("multi")})


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
            users = archive.read(members["u.user"]) if name == "ml-100k" and "u.user" in members else None
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise IngestError(f"{path}: truncated or corrupt zip ({exc}); delete it and fetch it again") from exc
    except OSError as exc:
        raise IngestError(f"{path}: cannot read ({exc})") from exc
    where = f"{path}:{spec.ratings}"
    ratings = parse(data, spec.fmt, where, name=name, rating_scale=scale)
    features = _zip_features(users, titles) if name == "ml-100k" else {}
    return ratings.replace(item_titles=_parse_titles(titles, spec.fmt) if titles else {}, **features)


def _zip_features(users: bytes | None, items: bytes | None) -> dict:
    """ml-100k's u.user and u.item (`|`-separated, latin-1) as `Ratings`' feature fields: each side
    where its file is present in GroupLens's layout (u.item: 5 fields + 19 genre flags)."""
    def table(data: bytes) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(data), sep="|", header=None, dtype=str, keep_default_na=False,
                           encoding="latin-1")

    out = {}
    if users is not None and (frame := table(users)).shape[1] == 5:
        out["user_features"] = ml100k_users(frame)
    if items is not None and (frame := table(items)).shape[1] == 5 + len(GENRES):
        flags = frame.iloc[:, 5:].to_numpy() == "1"
        genres = ["|".join(g for g, on in zip(GENRES, row) if on) for row in flags]
        out["item_features"] = ml100k_items(frame.iloc[:, 0], [d[-4:] for d in frame.iloc[:, 2]], genres)
    return out


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
