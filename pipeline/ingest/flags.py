"""The reader flags: how a command line describes a ratings source beyond its name.

`add_source_flags` adds them to a parser, `source_options` reads them back as `load`'s keywords.
`check_sep` and `column_map` are the checks the flags and `read_file` share (one rule each).
"""

from __future__ import annotations

import argparse

from pipeline.ratings import COLUMNS, IngestError, check_scale

__all__ = ["add_source_flags", "check_sep", "column_map", "source_options"]


def add_source_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that describe a source beyond its name (`source_options` reads them back; a flag
    not given sets no attribute)."""
    group = parser.add_argument_group("ratings source", argument_default=argparse.SUPPRESS)
    group.add_argument("--rating-scale", type=_flag(_scale_of), metavar="LOW,HIGH",
                       help="declared rating scale, e.g. 1,5 (=-10,10 for a negative low); a rating outside "
                            "it is an error (default: MovieLens's own, else the file's min and max)")
    group.add_argument("--columns", type=_flag(column_map), metavar="OURS=THEIRS,...",
                       help="a file's column names, e.g. user_id=userId,item_id=movieId,rating=stars (each "
                            "must exist; it wins over a column read by default, e.g. 'rating'); "
                            "with --no-header, our names in the file's field order, e.g. item_id,user_id,rating")
    group.add_argument("--sep", type=_flag(check_sep), help="a text file's field separator, e.g. ';' or "
                       "'\\t' (default: by the file name: .csv comma, .tsv tab, .dat ::)")
    group.add_argument("--no-header", dest="header", action="store_const", const=False,
                       help="the file's first line is data (fields: --columns order, else "
                            "user_id,item_id,rating[,timestamp])")
    for side in ("user", "item"):
        group.add_argument(f"--{side}-features", metavar="FILE",
                           help=f"a CSV/TSV of {side} features: a header, the key column {side}_id (else the "
                                "first), one column per feature (numbers: bucketed; a|b: several values; else a "
                                "category); replaces the source's own")


def source_options(values) -> dict:
    """`load`'s keywords from what `add_source_flags` parsed (an argparse Namespace or any object
    with those attributes): only those given."""
    keys = ("rating_scale", "columns", "sep", "header", "user_features", "item_features")
    return {key: getattr(values, key) for key in keys if getattr(values, key, None) is not None}


def _flag(check):
    """An argparse `type` from one of the checks (its IngestError -> a usage error)."""
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


def check_sep(sep: str) -> str:
    """A literal field separator (`\\t` on a command line is a tab)."""
    sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)
    if not sep or any(c in sep for c in "\r\n\"\x1f"):
        raise IngestError(f"sep {sep!r}: expected a non-empty separator without quotes or line breaks")
    return sep


def column_map(columns) -> dict[str, str]:
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
