"""`load`: which source a name means (MovieLens, synthetic, or a ratings file), and its options
checked against that source before anything is read."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.ingest.files import read_file
from pipeline.ingest.grouplens import MOVIELENS, movielens
from pipeline.ratings import IngestError, Ratings
from pipeline.synthetic import synthetic, synthetic_options

__all__ = ["load"]


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
