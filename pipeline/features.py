"""Side features per user or per item: grouped, bucketed, laid out as sparse blocks for the trainers.

`SideFeatures` holds one side's features: the entities' raw ids (sorted) and, per group, its kind,
vocabulary and each entity's value indices. `blocks(table_ids)` lays them over a split's table rows
(the fallback row last, empty) as one CSR matrix per group; `encode_row` encodes one new entity.
Pure: values in, values out; file reading lives in `pipeline.ingest`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["KINDS", "MAX_BUCKETS", "Block", "Group", "Rule", "SideFeatures", "infer_kind", "quantile_edges"]

KINDS = ("categorical", "multi", "numeric")
MAX_BUCKETS = 10  # numeric columns without fixed edges: at most this many quantile buckets


@dataclass(frozen=True)
class Rule:
    """How to read one column: `kind` (None: `infer_kind`), numeric `edges` (None: `quantile_edges`),
    categorical `prefix` (keep the first n characters, e.g. a zip code's first digit; 0: all)."""

    kind: str | None = None
    edges: tuple[float, ...] | None = None
    prefix: int = 0


@dataclass(frozen=True, eq=False)
class Block:
    """One group's CSR matrix, `shape` (rows, len(vocabulary)): `crow` int64 (rows+1,), `col` int64
    (nnz,), `values` float32 (nnz,). A row with n values has n entries of 1/sqrt(n) (1 for one value)."""

    name: str
    kind: str
    crow: np.ndarray
    col: np.ndarray
    values: np.ndarray
    shape: tuple[int, int]

    def tensor(self, device=None):
        """The block as a torch sparse CSR tensor on `device` (CPU by default)."""
        import warnings

        import torch

        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(torch.from_numpy(self.crow), torch.from_numpy(self.col),
                                           torch.from_numpy(self.values), self.shape, device=device)


@dataclass(frozen=True, eq=False)
class Group:
    """One feature group. Column j of its block is `vocabulary[j]`: categorical and multi labels
    sorted; numeric buckets ascending over `edges` (bucket 0 < edges[0], bucket b in
    [edges[b-1], edges[b]), the last >= edges[-1]). `prefix`: categorical values cut to their first
    `prefix` characters (0: whole). Entity e's value indices: codes[offsets[e]:offsets[e+1]]
    (int64, sorted, distinct; none when it has no value)."""

    name: str
    kind: str
    vocabulary: tuple[str, ...]
    edges: tuple[float, ...]
    prefix: int
    offsets: np.ndarray
    codes: np.ndarray

    def encode(self, text) -> np.ndarray:
        """One value as text -> its value indices, int64 (k,): an unknown label or empty text -> none;
        a number outside the edges -> the edge bucket; a malformed number -> ValueError."""
        text = "" if text is None else str(text).strip()
        if not text:
            return np.zeros(0, dtype=np.int64)
        if self.kind == "numeric":
            number = _number(text)
            if number is None:
                raise ValueError(f"feature {self.name!r}={text!r}: not a number: expected a finite number "
                                 f"(buckets {', '.join(self.vocabulary)})")
            return np.searchsorted(np.asarray(self.edges), [number], side="right").astype(np.int64)
        index = {label: j for j, label in enumerate(self.vocabulary)}
        labels = _labels(text, self.kind, self.prefix)
        return np.array(sorted({index[v] for v in labels if v in index}), dtype=np.int64)

    def block(self, entity: np.ndarray) -> Block:
        """Rows of `entity` (int64 (rows,), an index into this side's ids; -1: no features)."""
        has = entity >= 0
        safe = np.where(has, entity, 0)
        starts = np.where(has, self.offsets[safe], 0)
        counts = np.where(has, self.offsets[safe + 1] - starts, 0)
        crow = np.zeros(len(entity) + 1, dtype=np.int64)
        np.cumsum(counts, out=crow[1:])
        gather = np.repeat(starts - crow[:-1], counts) + np.arange(crow[-1])
        values = np.repeat(1.0 / np.sqrt(np.maximum(counts, 1)), counts).astype(np.float32)
        return Block(self.name, self.kind, crow, self.codes[gather].astype(np.int64), values,
                     (len(entity), len(self.vocabulary)))


@dataclass(frozen=True, eq=False)
class SideFeatures:
    """One side's features: `ids` sorted distinct raw ids (int64, or object array of str: the kind of
    the ratings' id column), `groups` in a fixed order. `digest`: sha256 of the canonical content
    (ids, groups, vocabularies, edges, every entity's values), so a study can tell features changed."""

    ids: np.ndarray
    groups: tuple[Group, ...]
    digest: str = field(default="", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", _digest(self.ids, self.groups))

    @classmethod
    def build(cls, ids, columns: Mapping[str, Sequence], rules: Mapping[str, Rule] | None = None) -> SideFeatures:
        """From raw `ids` (n,) distinct and one text value per id per column (None: no value; multi
        values separated by `|`, empty parts skipped). Groups keep the columns' order."""
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            ids = np.array([str(i) for i in ids], dtype=object)
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
            raise ValueError(f"features: id {str(ids[1:][ids[1:] == ids[:-1]][0])!r} appears twice: expected one "
                             "row per id")
        rules = rules or {}
        groups = tuple(_group(name, [values[i] for i in order], rules.get(name, Rule()))
                       for name, values in columns.items())
        return cls(_frozen(ids.astype(np.int64) if ids.dtype.kind in "iu" else ids), groups)

    @property
    def sizes(self) -> dict[str, int]:
        """Each group's number of columns (its vocabulary's length)."""
        return {g.name: len(g.vocabulary) for g in self.groups}

    def encode_row(self, values: Mapping[str, str]) -> dict[str, np.ndarray]:
        """One new entity given as text, {group: value} (e.g. {"age": "25", "zip": "9"}) -> each
        group's value indices, int64 (k,) (a group not given: none). Weight them as `blocks` does:
        1/sqrt(k). An unknown group or a malformed number is a ValueError naming key and value."""
        groups = {g.name: g for g in self.groups}
        for key, value in values.items():
            if key not in groups:
                raise ValueError(f"feature {key!r}={value!r}: no such group: expected one of {', '.join(groups)}")
        return {name: group.encode(values.get(name)) for name, group in groups.items()}

    def blocks(self, table_ids: np.ndarray) -> list[Block]:
        """One CSR block per group over a split's table: rows = len(table_ids) + 1, row r the entity
        `table_ids[r]` (sorted raw ids), the last the fallback row (no features); a table id without
        features gets an empty row, and ids with features but not in the table are unused. Values:
        1 for an entity's one value in a group, 1/sqrt(n) each for n values (multi-valued groups)."""
        table_ids = np.asarray(table_ids)
        if len(table_ids) and len(self.ids) and _kind(table_ids) != _kind(self.ids):
            raise ValueError(f"features are keyed by {_kind(self.ids)} ids, the table's ids are "
                             f"{_kind(table_ids)}: expected one kind")
        entity = np.full(len(table_ids) + 1, -1, dtype=np.int64)
        if len(self.ids) and len(table_ids):
            at = np.minimum(np.searchsorted(self.ids, table_ids), len(self.ids) - 1)
            entity[:-1] = np.where(self.ids[at] == table_ids, at, -1)
        return [group.block(entity) for group in self.groups]


def infer_kind(values: Sequence[str]) -> str:
    """A column's kind from its text values: multi if any contains `|`, numeric if every value is a
    finite number, else categorical."""
    present = [v for v in values if v is not None]
    if any("|" in v for v in present):
        return "multi"
    if present and all(_number(v) is not None for v in present):
        return "numeric"
    return "categorical"


def quantile_edges(values: np.ndarray, buckets: int = MAX_BUCKETS) -> tuple[float, ...]:
    """Bucket edges for numbers (n,): one bucket per distinct value when there are at most
    `buckets`, else cut at the distinct deciles (data values, `inverted_cdf`): each edge is the
    first value above a cut, so every bucket holds data (a column of 90 % zeros still gets "<1"
    and ">=1") and the same data gives the same edges."""
    distinct = np.unique(np.asarray(values, dtype=np.float64))
    if len(distinct) <= buckets:
        return tuple(float(v) for v in distinct[1:])
    cuts = np.unique(np.quantile(values, np.arange(1, buckets) / buckets, method="inverted_cdf"))
    edges = distinct[np.searchsorted(distinct, cuts[cuts < distinct[-1]], side="right")]
    return tuple(float(v) for v in np.unique(edges))


def _group(name: str, values: list, rule: Rule) -> Group:
    """One column (text per entity, None: no value) -> a Group."""
    kind = rule.kind or infer_kind(values)
    if kind not in KINDS:
        raise ValueError(f"feature {name!r}: kind {kind!r}: expected one of {', '.join(KINDS)}")
    if kind == "numeric":
        numbers = [None if v is None else _number(v) for v in values]
        bad = next((v for v, x in zip(values, numbers) if v is not None and x is None), None)
        if bad is not None:
            raise ValueError(f"feature {name!r}={bad!r}: not a number: expected a finite number")
        known = np.array([x for x in numbers if x is not None], dtype=np.float64)
        edges = tuple(float(e) for e in rule.edges) if rule.edges is not None else quantile_edges(known)
        vocabulary = _bucket_labels(edges)
        per = [[] if x is None else [int(np.searchsorted(edges, x, side="right"))] for x in numbers]
    else:
        edges = ()
        labels = [[] if v is None else _labels(v, kind, rule.prefix) for v in values]
        vocabulary = tuple(sorted({label for row in labels for label in row}))
        index = {label: j for j, label in enumerate(vocabulary)}
        per = [sorted({index[label] for label in row}) for row in labels]
    offsets = np.zeros(len(per) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in per], out=offsets[1:])
    codes = np.array([c for p in per for c in p], dtype=np.int64)
    return Group(name, kind, vocabulary, edges, rule.prefix, _frozen(offsets), _frozen(codes))


def _labels(text: str, kind: str, prefix: int) -> list[str]:
    """A categorical or multi value's labels (trimmed, empty parts skipped, prefix applied)."""
    parts = text.split("|") if kind == "multi" else [text]
    parts = [p.strip() for p in parts if p.strip()]
    return [p[:prefix] for p in parts] if prefix else parts


def _bucket_labels(edges: tuple[float, ...]) -> tuple[str, ...]:
    """`<18`, `[18,25)`, ..., `>=56`; one bucket `all` without edges."""
    if not edges:
        return ("all",)
    middle = [f"[{a:g},{b:g})" for a, b in zip(edges[:-1], edges[1:])]
    return (f"<{edges[0]:g}", *middle, f">={edges[-1]:g}")


def _number(text: str) -> float | None:
    """A finite number written as text, else None (`nan`, `inf` and words are not numbers)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def _kind(ids: np.ndarray) -> str:
    return "integer" if ids.dtype.kind in "iu" else "text"


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _digest(ids: np.ndarray, groups: tuple[Group, ...]) -> str:
    digest = hashlib.sha256()
    if ids.dtype.kind in "iu":
        digest.update(b"int64" + memoryview(np.ascontiguousarray(ids, dtype=np.int64)))
    else:
        digest.update(b"str" + "\0".join(ids.tolist()).encode())
    for g in groups:
        head = json.dumps([g.name, g.kind, list(g.vocabulary), list(g.edges), g.prefix])
        digest.update(head.encode() + memoryview(g.offsets) + memoryview(g.codes))
    return digest.hexdigest()
