"""Sources -> one validated, fingerprinted `Ratings` table.

Sources: MovieLens by name (`ml-100k` offline from the recbole wheel; the others from GroupLens,
checksum-verified and cached), a local ratings file (CSV, TSV, Parquet, GroupLens `u.data` /
`ratings.dat`, RecBole `.inter`), or `synthetic` low-rank data with a known noise floor.
`add_source_flags` / `source_options`: the flags that describe a source, shared by every command.
Side features (`pipeline.features`) ride on the `Ratings`: ml-100k's own, or a user's files
(`load(..., user_features=..., item_features=...)`, `--user-features` / `--item-features`).

Modules: `source` (`load`: a name -> its source; `read_features`: a side's feature file),
`grouplens` (MovieLens archives, the download cache, the recbole copy of ml-100k and its features),
`files` (reading a ratings file), `flags` (the reader flags).
"""

from pipeline.ingest.flags import add_source_flags, source_options
from pipeline.ingest.files import read_file
from pipeline.ingest.grouplens import MOVIELENS, cache_dir, movielens
from pipeline.ingest.source import load
from pipeline.ratings import IngestError, Ratings
from pipeline.synthetic import synthetic

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
