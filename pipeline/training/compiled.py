"""The compiled CPU engine: sparse_sgd's epoch as one numba loop, one pass per example instead of
a dozen tensor operations per batch (~3× the tensor engine's throughput on a 2-core CPU, above
Surprise's Cython SVD). Same mathematics as the tensor engine: within a batch, every gradient is
taken at the batch's starting parameters, and the updates are summed. K models run one after
the other in each epoch (on a CPU stacking buys nothing: bench/stack.py).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from pipeline.evaluate import squared_error_sum
from pipeline.model import MatrixFactorization, learned_columns
from pipeline.split import Interactions
from pipeline.training.config import TrainConfig
from pipeline.training.tables import initial_model, l2_columns

__all__ = ["CompiledEngine"]


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


class CompiledEngine:
    """K sparse_sgd models without implicit blocks on the CPU (see `pipeline.training.driver.Engine`)."""

    def __init__(self, train: Interactions, configs: list[TrainConfig], seeds: list[int], dims: dict,
                 valid: Interactions | None) -> None:
        mean = train.ratings.double().mean().item()
        self.models = [initial_model(c, s, mean, dims, torch.device("cpu")) for c, s in zip(configs, seeds)]
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.configs, self.valid, self.rows = configs, valid, len(train)
        offset = self.models[0].global_mean - train.ratings  # μ − r, once: err = p·q + (μ − r)
        self.data = train.users.numpy(), train.items.numpy(), offset.numpy()
        self.rules = [self._rules(model, config) for model, config in zip(self.models, configs)]
        self.live = list(range(len(configs)))

    @staticmethod
    def _rules(model: MatrixFactorization, config: TrainConfig) -> tuple[np.ndarray, ...]:
        """The kernel's per-model constants, built once: per-column λ, learned masks, scratch."""
        width, batch = model.users.shape[1], config.batch_size
        return (*(t.numpy() for t in l2_columns(config, width)),
                *(learned_columns(width, side).numpy() for side in ("user", "item")),
                np.empty((batch, width), np.float32), np.empty((batch, width), np.float32), np.empty(batch, np.float32))

    def epoch(self, epoch: int) -> list[float]:
        return [self._epoch(k, epoch) / self.rows for k in self.live]

    def _epoch(self, k: int, epoch: int) -> float:
        model, config = self.models[k], self.configs[k]
        perm = torch.randperm(self.rows, generator=self.generators[k])
        lr = np.float32(config.lr * config.lr_decay ** (epoch - 1))
        # numpy views share the tensors' memory: the loop updates the model's tables in place
        return sgd_epoch(model.users.detach().numpy(), model.items.detach().numpy(), *self.data, perm.numpy(),
                         config.batch_size, lr, *self.rules[k])

    def valid_rmse(self) -> list[float]:
        return [math.sqrt(squared_error_sum(self.models[k], self.valid)[0].item() / len(self.valid)) for k in self.live]

    def can_be_best(self, k: int, epoch: int) -> bool:
        return True

    def snapshot(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.models[k].users.detach().clone(), self.models[k].items.detach().clone()

    def model(self, k: int, snapshot) -> MatrixFactorization:
        model = self.models[k]
        if snapshot is not None:
            with torch.no_grad():
                model.users.copy_(snapshot[0])
                model.items.copy_(snapshot[1])
        return model

    def drop(self, leaving: list[int]) -> None:
        self.live = [k for k in self.live if k not in leaving]
