"""Ratings -> Split: train / valid / test rows and the id maps, built from train only.

Pure and deterministic by seed. Valid/test rows whose user or item never occurs in train are
"cold": kept and scored by the fallback row (the average known user or item), or dropped with
`cold="drop"`; either way they are counted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.features import Block
from pipeline.ratings import Ratings

__all__ = ["STRATEGIES", "Interactions", "Split", "split"]

STRATEGIES = ("random", "per_user", "temporal", "leave_last_k")


@dataclass(frozen=True)
class Interactions:
    """Encoded rows: `users`, `items` int64 (N,) table rows (unknown ids -> the fallback row, equal
    to n_users / n_items), `ratings` float32 (N,). All three on one device."""

    users: torch.Tensor
    items: torch.Tensor
    ratings: torch.Tensor

    def __len__(self) -> int:
        return self.ratings.shape[0]

    def to(self, device: torch.device | str) -> Interactions:
        """A copy on `device`; itself when already there (so data moves once per process)."""
        device = torch.device(device)
        if self.ratings.device == device or (device.index is None and self.ratings.device.type == device.type):
            return self
        return Interactions(*(t.to(device) for t in (self.users, self.items, self.ratings)))


@dataclass(frozen=True, eq=False)
class Split:
    """Row positions into `ratings.frame` for each part, and the train-only id maps.

    `user_ids` / `item_ids`: sorted raw ids seen in train; table row r holds id `user_ids[r]`.
    `cold`: per part, the rows whose user or item is unseen in train (kept or dropped, per policy).
    """

    ratings: Ratings
    train_rows: np.ndarray
    valid_rows: np.ndarray
    test_rows: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    settings: dict
    cold: dict
    fingerprint: str

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def dims(self) -> dict:
        """The table shapes and scale every model of this split is built with: `fit`'s keywords
        n_users, n_items, rating_scale."""
        return {"n_users": self.n_users, "n_items": self.n_items, "rating_scale": self.ratings.rating_scale}

    def part(self, name: str) -> Interactions:
        """`train`, `valid`, `test`, or `train+valid` (the refit's data), encoded, on the CPU."""
        rows = np.concatenate([getattr(self, f"{p}_rows") for p in name.split("+")])
        frame = self.ratings.frame
        return Interactions(
            torch.from_numpy(_encode(self.user_ids, frame["user_id"].to_numpy()[rows])),
            torch.from_numpy(_encode(self.item_ids, frame["item_id"].to_numpy()[rows])),
            torch.from_numpy(frame["rating"].to_numpy()[rows]),
        )

    def feature_blocks(self, side: str) -> list[Block]:
        """The ratings' `side` ("user" or "item") features over this split's table: one CSR block per
        group, (n_users + 1 or n_items + 1, group size), row r the train id `user_ids[r]` /
        `item_ids[r]`, the fallback row last and empty (see `SideFeatures.blocks`); [] without features."""
        if side not in ("user", "item"):
            raise ValueError(f"feature_blocks side {side!r}: expected 'user' or 'item'")
        features = getattr(self.ratings, f"{side}_features")
        return [] if features is None else features.blocks(getattr(self, f"{side}_ids"))

    @property
    def features_digest(self) -> str:
        """What the side features are ("none" without any): a study made with other features refuses
        this split, as it refuses another split (features are not part of `fingerprint`)."""
        digests = [getattr(self.ratings, f"{side}_features") for side in ("user", "item")]
        if not any(digests):
            return "none"
        return hashlib.sha256(" ".join(f.digest if f else "-" for f in digests).encode()).hexdigest()

    @property
    def features(self) -> dict:
        """Each side's feature blocks over the tables (`feature_blocks`): `fit`'s `features`."""
        return {side: self.feature_blocks(side) for side in ("user", "item")}

    def summary(self) -> dict:
        return {"train": len(self.train_rows), "valid": len(self.valid_rows), "test": len(self.test_rows),
                "users": self.n_users, "items": self.n_items, **{f"cold_{k}": v for k, v in self.cold.items()}}


def _encode(known: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Raw ids -> rows of the sorted `known`; ids not in it -> len(known) (the fallback row)."""
    rows = np.searchsorted(known, ids)
    rows = np.minimum(rows, max(len(known) - 1, 0))
    found = known[rows] == ids if len(known) else np.zeros(len(ids), dtype=bool)
    return np.where(found, rows, len(known)).astype(np.int64)


def split(
    ratings: Ratings,
    strategy: str = "random",
    *,
    test: float = 0.1,
    valid: float = 0.1,
    k: int = 1,
    seed: int = 0,
    cold: str = "keep",
) -> Split:
    """Split `ratings` into train / valid / test.

    random: `test` and `valid` are fractions of all rows. per_user: the same fractions of each
    user's rows, each user keeping at least one train row. temporal: one global time cut, the latest
    `test` fraction is test and the `valid` fraction before it is valid. leave_last_k: each user's
    last `k` rows are test and the `k` before them valid (users with too few rows stay in train).

    Raises ValueError when train, or a part that was asked for (a fraction > 0; leave_last_k's
    test), would get no rows: too little data to split, said with the rows that are needed.
    """
    _check(strategy, test, valid, k, cold)
    frame = ratings.frame
    test_rows, valid_rows = _held_out(ratings, strategy, test, valid, k, np.random.default_rng(seed))
    held = np.zeros(len(frame), dtype=bool)
    held[test_rows] = held[valid_rows] = True
    train_rows = np.flatnonzero(~held)
    sizes = {"train": len(train_rows), "test": len(test_rows), "valid": len(valid_rows)}
    _refuse_empty(ratings, strategy, test, valid, k, sizes)
    user_ids = np.unique(frame["user_id"].to_numpy()[train_rows])
    item_ids = np.unique(frame["item_id"].to_numpy()[train_rows])

    parts, counts = _cold(ratings, strategy, cold, user_ids, item_ids,
                          {"valid": np.sort(valid_rows), "test": np.sort(test_rows)})
    settings = {"strategy": strategy, "test": test, "valid": valid, "seed": seed, "cold": cold}
    if strategy == "leave_last_k":
        settings["k"] = k
    blob = json.dumps({"data": ratings.fingerprint, **settings}, sort_keys=True)
    return Split(ratings=ratings, train_rows=train_rows, valid_rows=parts["valid"], test_rows=parts["test"],
                 user_ids=user_ids, item_ids=item_ids, settings=settings, cold=counts,
                 fingerprint=hashlib.sha256(blob.encode()).hexdigest())


def _cold(ratings: Ratings, strategy: str, cold: str, user_ids: np.ndarray, item_ids: np.ndarray,
          parts: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Each held-out part's count of cold rows (user or item unseen in train), and the parts
    without them when cold='drop' (refusing a part that would be left empty)."""
    frame, counts = ratings.frame, {}
    for name, rows in parts.items():
        unseen = (_encode(user_ids, frame["user_id"].to_numpy()[rows]) == len(user_ids)) | (
            _encode(item_ids, frame["item_id"].to_numpy()[rows]) == len(item_ids))
        counts[name] = int(unseen.sum())
        if cold == "drop":
            parts[name] = rows[~unseen]
            if len(rows) and not len(parts[name]):
                raise ValueError(f"{ratings.name}: split {strategy}: the {name} part would be empty: all {len(rows)} "
                                 "of its rows are cold (user or item unseen in train) and cold='drop' removes "
                                 "them; needs more data, or cold='keep'")
    return parts, counts


def _check(strategy: str, test: float, valid: float, k: int, cold: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"split strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    for key, value in (("test", test), ("valid", valid)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"split {key}={value}: expected a fraction in [0, 1)")
    if test + valid >= 1.0:
        raise ValueError(f"split test + valid = {test + valid:g}: expected < 1 so that train is not empty")
    if cold not in ("keep", "drop"):
        raise ValueError(f"split cold={cold!r}: expected 'keep' or 'drop'")
    if strategy == "leave_last_k" and k < 1:
        raise ValueError(f"split k={k}: expected k >= 1")


def _refuse_empty(ratings: Ratings, strategy: str, test: float, valid: float, k: int, sizes: dict) -> None:
    """One clear error for the first of train, test, valid that was asked for and got no rows."""
    asked = {"train": True, "test": test > 0 or strategy == "leave_last_k", "valid": valid > 0}
    part = next((p for p in ("train", "test", "valid") if asked[p] and not sizes[p]), None)
    if part is None:
        return
    n, fraction = len(ratings), {"test": test, "valid": valid}.get(part)
    if strategy in ("random", "temporal"):
        need = _min_rows(test, valid)
        why = (f"test + valid = {test + valid:g} leaves it no row" if part == "train"
               else f"{part}={fraction:g} of {n} rows rounds to 0 rows")
        wanted = f"at least {need} rows" + ("" if part == "train" else f" (or {part}=0)")
    else:
        largest = int(ratings.frame["user_id"].value_counts().max())
        if strategy == "per_user":
            need = _min_user_rows(test, valid, part)
            why = f"{part}={fraction:g} of each user's rows, one kept for train, rounds to 0 for every user"
        else:
            need = 2 * k + 1 if valid > 0 else k + 1
            parts = "test and valid" if valid > 0 else "test"
            why = f"only users with at least {need} rows give their last k={k} to {parts}"
        wanted = f"a user with at least {need} rows (the most any user has is {largest})"
    raise ValueError(f"{ratings.name}: split {strategy}: the {part} part would be empty ({n} rows): {why}; "
                     f"needs {wanted}")


def _min_rows(test: float, valid: float) -> int:
    """The fewest rows a random or temporal split gives every asked-for part at least one."""
    def ok(n: int) -> bool:
        n_test, n_valid = round(test * n), round(valid * n)
        return n - n_test - n_valid >= 1 and (n_test or not test) and (n_valid or not valid)

    n = max([1] + [int(0.5 / f) + 1 for f in (test, valid) if f > 0])  # round(f * n) >= 1 needs f * n > 0.5
    while not ok(n):
        n += 1
    return n


def _min_user_rows(test: float, valid: float, part: str) -> int:
    """The fewest rows a user needs for per_user to give it one `part` row (as `_per_user` counts)."""
    size = max(2, int(0.5 / (test if part == "test" else valid)) + 1)
    while True:
        n_test = min(round(test * size), size - 1)
        if (n_test if part == "test" else min(round(valid * size), size - 1 - n_test)) >= 1:
            return size
        size += 1


def _held_out(ratings: Ratings, strategy, test, valid, k, rng) -> tuple[np.ndarray, np.ndarray]:
    """(test rows, valid rows) of the strategy: positions into `ratings.frame`."""
    frame = ratings.frame
    n = len(frame)
    if strategy == "random":
        order = rng.permutation(n)
    elif strategy == "temporal":
        if frame["timestamp"].nunique() < 2:
            raise ValueError(f"{ratings.name}: temporal split needs timestamps; all rows have the same one")
        # Latest first; ties broken by the seeded shuffle so equal timestamps do not follow file order.
        order = np.lexsort((rng.random(n), -frame["timestamp"].to_numpy()))
    else:
        return _per_user(frame, strategy, test, valid, k, rng)
    n_test, n_valid = round(test * n), round(valid * n)
    return order[:n_test], order[n_test : n_test + n_valid]


def _per_user(frame, strategy, test, valid, k, rng) -> tuple[np.ndarray, np.ndarray]:
    """Held-out rows per user: ranked at random (per_user) or latest first (leave_last_k)."""
    users = frame["user_id"].to_numpy()
    _, group, size = np.unique(users, return_inverse=True, return_counts=True)
    # Sort rows by user, then by the ranking key; a row's rank is its position within its user.
    key = rng.random(len(frame)) if strategy == "per_user" else -frame["timestamp"].to_numpy() + rng.random(len(frame)) * 1e-3
    order = np.lexsort((key, group))
    starts = np.concatenate([[0], np.cumsum(size)[:-1]])
    rank = np.empty(len(frame), dtype=np.int64)
    rank[order] = np.arange(len(frame)) - np.repeat(starts, size)
    if strategy == "per_user":
        n_test = np.minimum(np.round(test * size), size - 1)
        n_valid = np.minimum(np.round(valid * size), size - 1 - n_test)
    else:  # leave_last_k: only users who keep at least one train row after giving 2k
        enough = size > 2 * k if valid > 0 else size > k
        n_test = np.where(enough, k, 0)
        n_valid = np.where(enough & (valid > 0), k, 0)
    per_row_test, per_row_valid = n_test[group], n_valid[group]
    test_rows = np.flatnonzero(rank < per_row_test)
    valid_rows = np.flatnonzero((rank >= per_row_test) & (rank < per_row_test + per_row_valid))
    return test_rows, valid_rows
