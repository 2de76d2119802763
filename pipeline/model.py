"""The biased MF scorer and its export wrapper (raw ids in, clamped ratings out).

r̂(u, i) = μ + b_u + b_i + p_u·q_i, stored so that it is ONE dot product: the user row is
[p_u, b_u, 1] and the item row is [q_i, 1, b_i]. One gather per side and one reduction per
example instead of four gathers: the trainer's hot loop is twice as fast on a CPU for it.
Each table has one extra last row, the fallback for ids unseen in training: [0…, 0, 1] and
[0…, 1, 0], so an unknown user scores μ + b_i and an unknown item μ + b_u.

This module owns that layout: the two trailing columns are named below by their negative index
(so a row widened with zero factors, as a stack does, keeps them); every other module names them.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ITEM_BIAS", "ITEM_ONE", "USER_BIAS", "USER_ONE", "MatrixFactorization", "RawIdScorer", "learned_columns",
           "narrow", "widen"]

USER_BIAS, USER_ONE = -2, -1  # user row [p_u, b_u, 1]
ITEM_ONE, ITEM_BIAS = -2, -1  # item row [q_i, 1, b_i]


def learned_columns(width: int, side: str, device=None) -> torch.Tensor:
    """(width,) float32: 1 for the columns a trainer learns, 0 for the side's constant 1 column."""
    mask = torch.ones(width, device=device)
    mask[USER_ONE if side == "user" else ITEM_ONE] = 0.0
    return mask


def widen(table: torch.Tensor, factors: int, width: int) -> torch.Tensor:
    """(..., rows, factors + 2) -> (..., rows, width): zero factor columns inserted before the two trailing ones."""
    wide = table.new_zeros(*table.shape[:-1], width)
    wide[..., :factors], wide[..., -2:] = table[..., :factors], table[..., -2:]
    return wide


def narrow(table: torch.Tensor, factors: int) -> torch.Tensor:
    """`widen`'s inverse: (..., rows, width) -> (..., rows, factors + 2), a new tensor."""
    return torch.cat([table[..., :factors], table[..., -2:]], -1)


class MatrixFactorization(nn.Module):
    """Scores (user row, item row) pairs. Training lives in `pipeline.training`.

    Parameters: `users` (n_users + 1, factors + 2), `items` (n_items + 1, factors + 2), float32.
    Buffers: `global_mean` (), `rating_scale` (2,) = (low, high).
    """

    def __init__(self, n_users: int, n_items: int, factors: int, global_mean: float,
                 rating_scale: tuple[float, float] = (1.0, 5.0)) -> None:
        super().__init__()
        self.factors = factors
        self.users = nn.Parameter(torch.zeros(n_users + 1, factors + 2))
        self.items = nn.Parameter(torch.zeros(n_items + 1, factors + 2))
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self.register_buffer("rating_scale", torch.tensor(rating_scale, dtype=torch.float32))
        self.restore_constants()

    @property
    def n_users(self) -> int:
        return self.users.shape[0] - 1

    @property
    def n_items(self) -> int:
        return self.items.shape[0] - 1

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator, std: float = 0.01) -> None:
        """Factors ~ N(0, std) (drawn on the CPU, so the same seed gives the same start on any
        device), biases 0, the fallback rows 0."""
        for table, n in ((self.users, self.n_users), (self.items, self.n_items)):
            table.zero_()
            table[:n, : self.factors] = torch.randn(n, self.factors, generator=generator).mul_(std).to(table.device)
        self.restore_constants()

    @torch.no_grad()
    def restore_constants(self, users: torch.Tensor | None = None, items: torch.Tensor | None = None) -> None:
        """Put back the constant 1 columns (an optimizer step or weight decay moves them), in the
        model's tables or in tables of the same layout (`users`, `items`)."""
        (self.users if users is None else users)[..., USER_ONE] = 1.0
        (self.items if items is None else items)[..., ITEM_ONE] = 1.0

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users, items: int64 (N,) table rows -> unclamped scores float32 (N,)."""
        return (self.users[users] * self.items[items]).sum(1) + self.global_mean

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores clamped to the rating scale, float32 (N,)."""
        return self(users, items).clamp(self.rating_scale[0], self.rating_scale[1])

    # Readable views for analysis and tests: (n, factors) and (n,), fallback row excluded.
    @property
    def user_factors(self) -> torch.Tensor:
        return self.users[:-1, : self.factors]

    @property
    def item_factors(self) -> torch.Tensor:
        return self.items[:-1, : self.factors]

    @property
    def user_bias(self) -> torch.Tensor:
        return self.users[:-1, USER_BIAS]

    @property
    def item_bias(self) -> torch.Tensor:
        return self.items[:-1, ITEM_BIAS]


class RawIdScorer(nn.Module):
    """Export wrapper: raw (user_id, item_id) pairs in, clamped ratings out.

    Input int64 (N, 2); output float32 (N,). Ids are mapped with a sorted id buffer and
    `torch.searchsorted`, so the graph needs no Python dict; an unknown id maps to the fallback row.
    Only integer raw ids can be exported.
    """

    def __init__(self, model: MatrixFactorization, user_ids: torch.Tensor, item_ids: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("user_ids", user_ids.to(torch.int64).contiguous())
        self.register_buffer("item_ids", item_ids.to(torch.int64).contiguous())

    @staticmethod
    def _rows(known: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.searchsorted(known, ids).clamp(max=known.shape[0] - 1)
        return torch.where(known[pos] == ids, pos, known.shape[0])

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        users = self._rows(self.user_ids, pairs[:, 0].contiguous())
        items = self._rows(self.item_ids, pairs[:, 1].contiguous())
        return self.model.predict(users, items)
