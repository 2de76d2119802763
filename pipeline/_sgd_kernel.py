"""The CPU loop of `sparse_sgd`, compiled with numba: one pass per example instead of a dozen
tensor operations per batch (~3× the tensor path's throughput on a 2-core CPU, above Surprise's
Cython SVD). Same mathematics as the tensor path in `pipeline.trainer`: within a batch, every
gradient is taken at the batch's starting parameters, and the updates are summed.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["compiled_epoch", "sgd_epoch"]


@numba.njit(cache=True, nogil=True)
def sgd_epoch(users_table, items_table, users, items, offset, order, batch, lr, l2_users, l2_items,
              learned_users, learned_items, old_users, old_items, err):  # pragma: no cover - compiled
    """One epoch in place. Tables (n+1, K) float32; users, items int64 (N,); offset = μ − r float32
    (N,); order: the epoch's permutation; l2_*: per-column λ (K,); learned_*: 1 for learned columns,
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
                users_table[u, f] -= lr * learned_users[f] * (e * q + l2_users[f] * p)
                items_table[i, f] -= lr * learned_items[f] * (e * p + l2_items[f] * q)
    return loss


def compiled_epoch(model, train, offset, l2, batch: int):
    """sparse_sgd's epoch as `sgd_epoch` over the model's CPU tables, in place (numpy views share
    the tensors' memory): returns (perm int64 (N,) tensor, lr) -> Σ err² of the epoch.
    offset: μ − r float32 (N,); l2: per-column λ of the user and item tables, or None."""
    width = model.users.shape[1]
    zeros = np.zeros(width, np.float32)
    l2_users, l2_items = (t.cpu().numpy() for t in l2) if l2 is not None else (zeros, zeros)
    learned_users, learned_items = np.ones(width, np.float32), np.ones(width, np.float32)
    learned_users[model.factors + 1] = learned_items[model.factors] = 0.0  # the constant 1 columns
    tables = model.users.detach().numpy(), model.items.detach().numpy()
    data = train.users.numpy(), train.items.numpy(), offset.numpy()
    scratch = np.empty((batch, width), np.float32), np.empty((batch, width), np.float32), np.empty(batch, np.float32)

    def epoch(perm, lr: float) -> float:
        return sgd_epoch(*tables, *data, perm.numpy(), batch, np.float32(lr),
                         l2_users, l2_items, learned_users, learned_items, *scratch)

    return epoch
