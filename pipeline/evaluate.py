"""Exact error metrics over all rows, and the two reference baselines."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.model import ITEM_BIAS, USER_BIAS, MatrixFactorization
from pipeline.split import Interactions

__all__ = ["Metrics", "baselines", "biases_only", "clamped_error", "evaluate", "global_mean_model"]

_CHUNK = 1 << 20  # rows per chunk: bounds the temporary (chunk, factors + 2) gathers


@dataclass(frozen=True)
class Metrics:
    rmse: float
    mae: float
    n: int


def clamped_error(scores: torch.Tensor, ratings: torch.Tensor, rating_scale) -> torch.Tensor:
    """clamp(score) − r, float64 (..., N): scores (..., N), ratings (N,), rating_scale (low, high).
    The one prediction error that every engine's valid RMSE and `evaluate` are computed from."""
    low, high = rating_scale
    return (scores.clamp(low, high) - ratings).double()


@torch.inference_mode()
def squared_error_sum(model: MatrixFactorization, data: Interactions) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of squared and absolute errors of clamped predictions, as 0-d tensors on the model's
    device (no host sync: the caller decides when to read them)."""
    sse = torch.zeros((), dtype=torch.float64, device=data.ratings.device)
    sae = torch.zeros_like(sse)
    for start in range(0, len(data), _CHUNK):
        end = start + _CHUNK
        err = clamped_error(model(data.users[start:end], data.items[start:end]), data.ratings[start:end],
                            model.rating_scale)
        sse += err.square().sum()
        sae += err.abs().sum()
    return sse, sae


def evaluate(model: MatrixFactorization, data: Interactions) -> Metrics:
    """Global RMSE and MAE of clamped predictions over every row of `data` (not a mean of
    per-batch RMSEs). `data` must be on the model's device."""
    if len(data) == 0:
        return Metrics(float("nan"), float("nan"), 0)
    sse, sae = squared_error_sum(model, data)
    n = len(data)
    return Metrics(rmse=(sse / n).sqrt().item(), mae=(sae / n).item(), n=n)


def global_mean_model(train: Interactions, n_users: int, n_items: int,
                      rating_scale: tuple[float, float]) -> MatrixFactorization:
    """Predicts the train mean for everyone."""
    return MatrixFactorization(n_users, n_items, 0, train.ratings.double().mean().item(), rating_scale)


def biases_only(train: Interactions, n_users: int, n_items: int, rating_scale: tuple[float, float],
                damping: float = 10.0, sweeps: int = 3) -> MatrixFactorization:
    """μ + b_u + b_i fitted by damped alternating means (Koren 2010, "Factor in the neighbors",
    §2.1): b_i = Σ(r − μ − b_u) / (damping + n_i), then b_u likewise, a few sweeps."""
    model = global_mean_model(train, n_users, n_items, rating_scale)
    mu = model.global_mean.double()
    u, i, r = train.users, train.items, train.ratings.double()
    bu = torch.zeros(n_users + 1, dtype=torch.float64)
    bi = torch.zeros(n_items + 1, dtype=torch.float64)
    n_u = torch.bincount(u, minlength=n_users + 1).double()
    n_i = torch.bincount(i, minlength=n_items + 1).double()
    for _ in range(sweeps):
        bi = torch.zeros_like(bi).index_add_(0, i, r - mu - bu[u]) / (damping + n_i)
        bu = torch.zeros_like(bu).index_add_(0, u, r - mu - bi[i]) / (damping + n_u)
    with torch.no_grad():
        model.users[:-1, USER_BIAS] = bu[:-1].float()
        model.items[:-1, ITEM_BIAS] = bi[:-1].float()
    return model


def baselines(train: Interactions, test: Interactions, n_users: int, n_items: int,
              rating_scale: tuple[float, float]) -> dict[str, Metrics]:
    """The reference points every trained model is compared with (CPU tensors)."""
    return {
        "global_mean": evaluate(global_mean_model(train, n_users, n_items, rating_scale), test),
        "biases_only": evaluate(biases_only(train, n_users, n_items, rating_scale), test),
    }
