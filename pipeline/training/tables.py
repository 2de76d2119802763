"""What the two mf engines share: the one initialization and the per-column L2 of the row layout."""

from __future__ import annotations

import torch

from pipeline.model import ITEM_BIAS, USER_BIAS, MatrixFactorization
from pipeline.training.config import TrainConfig

__all__ = ["initial_model", "l2_columns"]


def initial_model(config: TrainConfig, seed: int, mean: float, dims: dict, device: torch.device) -> MatrixFactorization:
    """A model of `config`'s factors at its start: factors ~ N(0, init_std) drawn on the CPU from
    `seed` (the same start on any device), biases 0. dims: n_users, n_items, rating_scale."""
    model = MatrixFactorization(dims["n_users"], dims["n_items"], config.factors, mean, dims["rating_scale"])
    model.reset_parameters(torch.Generator().manual_seed(seed), config.init_std)
    return model.to(device)


def l2_columns(config: TrainConfig, width: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column λ of the user and item rows (width,) each: l2 on the factors, l2_bias on the
    biases, 0 on the constant columns and on zero padding up to `width`."""
    users = torch.zeros(width, device=device)
    users[: config.factors] = config.l2
    items = users.clone()
    users[USER_BIAS] = items[ITEM_BIAS] = config.l2_biases
    return users, items
