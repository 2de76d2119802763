"""Seeded low-rank + noise ratings with a known noise floor, at any shape (ML-25M's included)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.ratings import IngestError, Ratings, canonical

__all__ = ["synthetic", "synthetic_options"]


def synthetic_options(spec: str) -> dict:
    """`synthetic:key=value,...` -> keyword arguments of `synthetic` (ints or floats)."""
    allowed = ("n_users", "n_items", "n_ratings", "rank", "noise", "seed")
    options = {}
    for item in filter(None, spec.partition(":")[2].split(",")):
        key, _, value = item.partition("=")
        if key not in allowed:
            raise IngestError(f"{spec}: unknown option {key!r}: expected key=value with key in {', '.join(allowed)}")
        try:
            options[key] = float(value) if key == "noise" else int(value)
        except ValueError:
            raise IngestError(f"{spec}: {key}={value!r}: expected a number") from None
    return options


def synthetic(
    n_users: int = 1000,
    n_items: int = 500,
    n_ratings: int = 50_000,
    *,
    rank: int = 8,
    noise: float = 0.3,
    seed: int = 0,
    rating_scale: tuple[float, float] = (1.0, 5.0),
) -> Ratings:
    """Seeded low-rank + noise ratings with a known noise floor.

    rating = clip(3 + b_u + b_i + p_u·q_i + eps), p, q ~ N(0, std rank^-1/4) so p·q has unit variance,
    b ~ N(0, 0.3), eps ~ N(0, noise): a model that recovers the truth scores RMSE ≈ `noise`
    (slightly less where clipping binds). Pairs are sampled uniformly without repeats; memory is
    O(n_ratings), never O(n_users × n_items).
    """
    if n_ratings > n_users * n_items:
        raise IngestError(f"synthetic: n_ratings {n_ratings} > n_users × n_items = {n_users * n_items}")
    rng = np.random.default_rng(seed)
    keys = np.empty(0, dtype=np.int64)
    while len(keys) < n_ratings:  # few rounds: collisions are rare unless the matrix is dense
        draw = rng.integers(0, n_users * n_items, size=int((n_ratings - len(keys)) * 1.05) + 16)
        keys = np.unique(np.concatenate([keys, draw]))  # sorted: ends up in (user, item) order
    if len(keys) > n_ratings:  # drop the surplus at random positions (a few %)
        keys = np.delete(keys, rng.choice(len(keys), len(keys) - n_ratings, replace=False))
    users, items = keys // n_items, keys % n_items
    p = rng.normal(0, rank**-0.25, (n_users, rank)).astype(np.float32)
    q = rng.normal(0, rank**-0.25, (n_items, rank)).astype(np.float32)
    bu, bi = rng.normal(0, 0.3, n_users), rng.normal(0, 0.3, n_items)
    mid = sum(rating_scale) / 2
    rating = np.empty(n_ratings, dtype=np.float32)
    for lo in range(0, n_ratings, 1 << 20):  # chunks: p[users] whole would be n_ratings × rank floats
        u, i = users[lo : lo + (1 << 20)], items[lo : lo + (1 << 20)]
        signal = np.einsum("nk,nk->n", p[u], q[i]) + bu[u] + bi[i] + mid
        rating[lo : lo + len(u)] = np.clip(signal + rng.normal(0, noise, len(u)), *rating_scale)
    frame = pd.DataFrame({"user_id": users, "item_id": items, "rating": rating,
                          "timestamp": rng.integers(0, 10**9, n_ratings)})
    name = f"synthetic-{n_users}x{n_items}-{n_ratings}-r{rank}-s{seed}"
    return canonical(frame, name=name, rating_scale=rating_scale, source=name)
