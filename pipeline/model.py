"""The biased MF scorer and its export wrapper (raw ids in, clamped ratings out).

r̂(u, i) = μ + b_u + b_i + p_u·q_i, stored so that it is ONE dot product: the user row is
[p_u, b_u, 1] and the item row is [q_i, 1, b_i]. One gather per side and one reduction per
example instead of four gathers: the trainer's hot loop is twice as fast on a CPU for it.
Each table has one extra last row, the fallback for ids unseen in training. A fitted model's is
the mean of its side's known rows (`average_fallbacks`), so an unknown user scores as the average
known user would (μ + mean_u U_u·V_i, exactly the mean of the known users' unclamped scores; an
ordinal model's, of their latent scores), an unknown item likewise. (The zero row, μ + b_i, is a
poor guess once implicit blocks are folded in: the item biases are then fitted against users
whose rows carry their rated items' sums; on ml-100k's held-out users a bayes champion's zero row
scored 1.082 RMSE, the average row 1.023, the item-bias baseline 1.025, split seeds 0-2:
bench/new_users.py.) A fresh model's is [0…, 0, 1] and [0…, 1, 0].

This module owns that layout: the two trailing columns are named below by their negative index
(so a row widened with zero factors, as a stack does, keeps them); every other module names them.

Side features: a model trained with them carries each feature group's table W_g in `side_tables`
(same layout, constant column 0), and an entity unseen in training but given its feature values
gets the row fallback + Σ_g k_g^-1/2 Σ_v W_g[v] (k_g: its number of values in group g). A fitted
model's tables are centred so that each group's sum averages zero over the known entities: a new
entity is the average one plus how its values differ from the average's, and a group it lacks
adds nothing, which is the average. `fold_features` is that sum, in process and in
the export (`FeatureScorer`).

Ordinal output: `OrdinalMF` is the same tables read as a latent score, mapped to the expected
rating by an ordered probit (`ordinal_mean`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["ITEM_BIAS", "ITEM_ONE", "SIDES", "USER_BIAS", "USER_ONE", "FeatureScorer", "MatrixFactorization",
           "OrdinalMF", "RawIdScorer", "feature_entries", "fold_features", "learned_columns", "narrow", "ordinal_mean",
           "widen"]

SIDES = ("user", "item")

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
    `side_tables`: {"user": [W_g], "item": [...]}, one float32 (n_values_g, factors + 2) per
    feature group in the order of the side's groups (`SideFeatures.groups`), row v the group's value
    v (its vocabulary's order), in the side's layout with its constant column 0 ([w, b, 0] for users,
    [w, 0, b] for items); a side without features is absent ({} for a model without any). Any family
    fills it; it is a plain attribute (not in `state_dict`, not moved by `.to`): what reads it
    moves it.
    """

    def __init__(self, n_users: int, n_items: int, factors: int, global_mean: float,
                 rating_scale: tuple[float, float] = (1.0, 5.0)) -> None:
        super().__init__()
        self.factors = factors
        self.users = nn.Parameter(torch.zeros(n_users + 1, factors + 2))
        self.items = nn.Parameter(torch.zeros(n_items + 1, factors + 2))
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self.register_buffer("rating_scale", torch.tensor(rating_scale, dtype=torch.float32))
        self.side_tables: dict[str, list[torch.Tensor]] = {}
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

    @torch.no_grad()
    def average_fallbacks(self, value_weights: Mapping[str, Sequence[torch.Tensor]]) -> None:
        """Each side's fallback row := the mean of its known rows (all rows but the last), and the
        rows of each feature table W_g (a side's g-th) that known entities have shifted by
        c = w·W_g / Σw, which makes the group's sum over every known entity's values zero:
        value_weights[side][g] (n_values_g,) the known entities' fold weights summed per value (the
        group's block's column sums). A value no known entity has keeps its row (0 from every engine:
        like no value, the average). Known rows do not change."""
        for side, table in (("user", self.users), ("item", self.items)):
            for w, t in zip(value_weights.get(side, []), self.side_tables.get(side, [])):
                w = w.to(t)
                if w.sum() > 0:
                    t[w > 0] -= (w @ t) / w.sum()
            table[-1] = table[:-1].mean(0)
        self.restore_constants()

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users, items: int64 (N,) table rows -> unclamped scores float32 (N,)."""
        return self.output(self.users[users] * self.items[items])

    def output(self, products: torch.Tensor) -> torch.Tensor:
        """Scores from the rows' elementwise products (N, factors + 2) -> float32 (N,): μ + their sum."""
        return products.sum(1) + self.global_mean

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scores clamped to the rating scale, float32 (N,)."""
        return self(users, items).clamp(self.rating_scale[0], self.rating_scale[1])

    def score_rows(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Rows in, as `predict` scores table rows: users (N, factors + 2), items (N, factors + 2) ->
        clamped float32 (N,)."""
        return self.output(users * items).clamp(self.rating_scale[0], self.rating_scale[1])

    def score_items(self, users: torch.Tensor) -> torch.Tensor:
        """Every known item's unclamped score for user rows (N, factors + 2) -> (N, n_items): one matmul."""
        return users @ self.items[: self.n_items].T + self.global_mean

    def feature_tables(self, side: str) -> tuple[torch.Tensor, torch.Tensor]:
        """`side`'s tables stacked: (Σ_g n_values_g, factors + 2) and each group's first row, int64 (G,);
        (0, factors + 2) and (0,) without features."""
        tables = [t.to(self.users.device) for t in self.side_tables.get(side, [])]
        sizes = torch.tensor([0] + [len(t) for t in tables], device=self.users.device)
        stacked = torch.cat(tables) if tables else self.users.new_zeros(0, self.users.shape[1])
        return stacked.detach(), sizes.cumsum(0)[:-1].clone()  # its own storage: torch.export.save wants it

    @torch.no_grad()
    def feature_rows(self, side: str, codes: Sequence[Sequence[np.ndarray] | Mapping[str, np.ndarray]]) -> torch.Tensor:
        """Rows of entities unseen in training, from their feature values: codes[n] holds entity n's
        value indices per group (int64 (k,) each, k >= 0; a sequence in the groups' order, or
        `SideFeatures.encode_row`'s dict) -> float32 (N, factors + 2): the side's fallback row +
        Σ_g k_g^-1/2 Σ_v W_g[v]. Without side tables every row is the fallback row."""
        table, starts = self.feature_tables(side)
        fallback = (self.users if side == "user" else self.items)[-1].detach()
        entries = torch.from_numpy(feature_entries(codes, len(starts))).to(fallback.device)
        return fallback + fold_features(table, starts, entries, len(codes))

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


class OrdinalMF(MatrixFactorization):
    """The bayes family's ordinal output as a scorer: an ordered probit over a latent score.

    f = μ + U_u·V_i is the posterior mean of the latent rating (the tables as above), and
    r̂ = ℓ_1 + Σ_k (ℓ_{k+1} − ℓ_k) Φ((f − c_k) a) (`ordinal_mean`), within [ℓ_1, ℓ_K]: the
    expected rating when the latent's posterior about f is normal (for f' ~ N(f, v), E Φ((f' − c)
    / σ) = Φ((f − c) / sqrt(σ² + v)): a = 1 / sqrt(σ² + v), σ² the noise's variance and v the
    latent's posterior variance, both averaged; `pipeline.training.ordinal`). Buffers:
    `cutpoints` (K − 1,) increasing, `scale` () = a, `levels` (K,) the ratings' levels.
    `pooled`: (σ², the mean of the samples' squared latents over the fitted rows), what chains'
    posteriors need to be pooled (`gibbs.average`); a plain attribute, as `side_tables` is.
    """

    def __init__(self, n_users: int, n_items: int, factors: int, global_mean: float,
                 rating_scale: tuple[float, float], cutpoints: torch.Tensor, scale: float, levels: torch.Tensor,
                 pooled: tuple[float, float]) -> None:
        super().__init__(n_users, n_items, factors, global_mean, rating_scale)
        self.register_buffer("cutpoints", cutpoints.float().clone())
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("levels", levels.float().clone())
        self.pooled = pooled

    @classmethod
    @torch.no_grad()
    def over(cls, latent: MatrixFactorization, cutpoints: torch.Tensor, scale: float, levels: torch.Tensor,
             pooled: tuple[float, float]) -> OrdinalMF:
        """The ordinal scorer over a latent model's tables and side tables (copied)."""
        model = cls(latent.n_users, latent.n_items, latent.factors, latent.global_mean.item(),
                    tuple(latent.rating_scale.tolist()), cutpoints, scale, levels, pooled).to(latent.users.device)
        model.users.copy_(latent.users)
        model.items.copy_(latent.items)
        model.side_tables = {side: [t.clone() for t in tables] for side, tables in latent.side_tables.items()}
        return model

    def output(self, products: torch.Tensor) -> torch.Tensor:
        return ordinal_mean(super().output(products), self.cutpoints, self.scale, self.levels)

    def score_items(self, users: torch.Tensor) -> torch.Tensor:
        return ordinal_mean(super().score_items(users), self.cutpoints, self.scale, self.levels)


def ordinal_mean(latent: torch.Tensor, cutpoints: torch.Tensor, scale: torch.Tensor, levels: torch.Tensor
                 ) -> torch.Tensor:
    """The ordered probit's expected rating: latent (...,), cutpoints (K − 1,), scale (), levels
    (K,) -> (...,) of the latent's dtype: ℓ_1 + Σ_k (ℓ_{k+1} − ℓ_k) Φ((f − c_k) a)."""
    above = 0.5 * torch.erfc((cutpoints - latent[..., None]) * (scale * 0.5**0.5))  # P(rating > ℓ_k)
    return levels[0] + (above * levels.diff()).sum(-1)


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


class FeatureScorer(RawIdScorer):
    """Export wrapper for a model with side tables: `RawIdScorer`'s pairs, plus feature values, in.

    forward(pairs int64 (N, 2), user_entries int64 (M, 3), item_entries int64 (M', 3)) -> float32
    (N,). An entries row (n, g, v): pair n's entity has value v (an index into the group's
    vocabulary) in group g (the side's group order); see `feature_entries`. An id unseen in
    training gets its side's fallback row + `fold_features`; a known id keeps its learned row (its
    entries are ignored). A side without tables gets one zero row, so the graph always has both
    inputs (send no entries for it).
    """

    def __init__(self, model: MatrixFactorization, user_ids: torch.Tensor, item_ids: torch.Tensor) -> None:
        super().__init__(model, user_ids, item_ids)
        for side in SIDES:
            table, starts = model.feature_tables(side)
            table = table if len(table) else table.new_zeros(1, table.shape[1])  # never indexed by real values
            starts = starts if len(starts) else starts.new_zeros(1)
            self.register_buffer(f"{side}_table", table.contiguous())
            self.register_buffer(f"{side}_starts", starts.contiguous())

    def forward(self, pairs: torch.Tensor, user_entries: torch.Tensor, item_entries: torch.Tensor) -> torch.Tensor:
        model, n = self.model, pairs.shape[0]
        users = self._rows(self.user_ids, pairs[:, 0].contiguous())
        items = self._rows(self.item_ids, pairs[:, 1].contiguous())
        new_users = (users == self.user_ids.shape[0]).to(model.users.dtype)[:, None]  # the fallback row
        new_items = (items == self.item_ids.shape[0]).to(model.items.dtype)[:, None]
        user_rows = model.users[users] + new_users * fold_features(self.user_table, self.user_starts, user_entries, n)
        item_rows = model.items[items] + new_items * fold_features(self.item_table, self.item_starts, item_entries, n)
        return model.score_rows(user_rows, item_rows)


def feature_entries(codes: Sequence[Sequence[np.ndarray] | Mapping[str, np.ndarray]], groups: int) -> np.ndarray:
    """Entities' value indices (codes[n][g]: int64 (k,), groups in order; a dict's values in its
    order) -> entries int64 (M, 3), one row (n, g, v) per value."""
    rows = []
    for n, per_group in enumerate(codes):
        values = list(per_group.values()) if isinstance(per_group, Mapping) else list(per_group)
        if len(values) != groups:
            raise ValueError(f"feature_rows: entity {n} has {len(values)} groups of values: expected {groups}")
        rows += [(n, g, int(v)) for g, group_values in enumerate(values) for v in np.asarray(group_values)]
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def fold_features(table: torch.Tensor, starts: torch.Tensor, entries: torch.Tensor, n: int) -> torch.Tensor:
    """Σ_g k_g^-1/2 Σ_v W_g[v] per entity: table (V, W) the groups' tables stacked, starts int64 (G,)
    each group's first row, entries int64 (M, 3) rows (entity, group, value) of distinct values,
    entity < n -> float32 (n, W) (zero for an entity without entries). k_g counts the entity's
    entries in group g: the weights the trainer's feature blocks have (`SideFeatures.blocks`)."""
    entity, group = entries[:, 0], entries[:, 1]
    key = entity * starts.shape[0] + group
    counts = table.new_zeros(n * starts.shape[0]).index_add_(0, key, table.new_ones(entries.shape[0]))
    weights = counts[key].rsqrt()[:, None]
    return table.new_zeros(n, table.shape[1]).index_add_(0, entity, table[starts[group] + entries[:, 2]] * weights)
