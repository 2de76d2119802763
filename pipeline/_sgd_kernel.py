"""The CPU loop of `sparse_sgd`, compiled with numba: one pass per example instead of a dozen
tensor operations per batch (~3× the tensor path's throughput on a 2-core CPU, above Surprise's
Cython SVD). Same mathematics as the tensor path in `pipeline.trainer`: within a batch, every
gradient is taken at the batch's starting parameters, and the updates are summed.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["sgd_epoch"]


@numba.njit(cache=True, nogil=True)
def sgd_epoch(users_table, items_table, users, items, offset, order, batch, lr, l2_users, l2_items,
              train_users, train_items, old_users, old_items, err):  # pragma: no cover - compiled
    """One epoch in place. Tables (n+1, K) float32; users, items int64 (N,); offset = μ − r float32
    (N,); order: the epoch's permutation; l2_*: per-column λ (K,); train_*: 1 for learned columns,
    0 for the constant ones; old_*: (batch, K) and err (batch,) scratch. Returns Σ err² (float64)."""
    width = users_table.shape[1]
    loss = 0.0
    for start in range(0, order.shape[0], batch):
        end = min(start + batch, order.shape[0])
        for t in range(start, end):  # errors and the rows they were computed with
            row = order[t]
            u, i = users[row], items[row]
            e = offset[row]
            for f in range(width):
                old_users[t - start, f] = users_table[u, f]
                old_items[t - start, f] = items_table[i, f]
                e += users_table[u, f] * items_table[i, f]
            err[t - start] = e
            loss += e * e
        for t in range(start, end):  # updates from the batch's starting rows
            row = order[t]
            u, i, e = users[row], items[row], err[t - start]
            for f in range(width):
                p, q = old_users[t - start, f], old_items[t - start, f]
                users_table[u, f] -= lr * train_users[f] * (e * q + l2_users[f] * p)
                items_table[i, f] -= lr * train_items[f] * (e * p + l2_items[f] * q)
    return loss


def scratch(batch: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.empty((batch, width), np.float32), np.empty((batch, width), np.float32), np.empty(batch, np.float32))
