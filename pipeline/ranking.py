"""Top-k ranking quality of a scorer, as `recommend` uses it: each user's unseen items ranked by
score, the held-out items rated at least `relevant` counted as hits.

For a user with R relevant held-out items and hits h_1..h_k (1 when the item at rank i is
relevant, 0 otherwise) among the top k of every item not in the fitted rows:
- NDCG@k = Σ_i h_i / log2(i + 1), over the same sum for the ideal list (min(k, R) hits first);
- Recall@k = Σ_i h_i / R;
- MAP@k (average precision) = Σ_i h_i · precision@i / min(k, R).
Each is averaged over the users with at least one relevant held-out item (the others have no
answer to find). Ties in score are broken by the lower item row, so results are reproducible.
"""

from __future__ import annotations

import math

import torch

from pipeline.model import ITEM_BIAS, MatrixFactorization
from pipeline.split import Interactions

__all__ = ["RANKING_METRICS", "VALID_RANKING", "popularity_model", "ranking_metrics", "ranking_sets"]

RANKING_METRICS = ("ndcg_at_10", "recall_at_10", "map_at_10")
VALID_RANKING = tuple(f"valid_{name}" for name in RANKING_METRICS)  # each complete trial's, on valid
_USERS = 256  # users scored at a time: bounds the (users, items) score matrix


def ranking_sets(seen: Interactions, held: Interactions, n_users: int, n_items: int, relevant: float = 4.0):
    """What `ranking_metrics` reads of the rows, for models of n_users x n_items: (the users with
    relevant held rows, int64 sorted; each one's relevant item rows; each user's seen item rows).
    Build once for many models of one split (a study's trials)."""
    known = (held.users < n_users) & (held.items < n_items) & (held.ratings >= relevant)
    return (*_relevant_sets(held.users[known], held.items[known]), _seen_sets(seen, n_users, n_items))


@torch.inference_mode()
def ranking_metrics(model: MatrixFactorization, seen: Interactions, held: Interactions, k: int = 10,
                    relevant: float = 4.0, sets: tuple | None = None) -> dict[str, float]:
    """{ndcg_at_k, recall_at_k, map_at_k} of `model` ranking each user's items not in `seen` (the
    rows it was fitted on) against `held` (valid or test rows); NaN without relevant rows. Only
    users and items the model knows take part (rows below the fallback row). Any device.
    sets: `ranking_sets` of these rows, built before (None: built here)."""
    n_users, n_items, device = model.n_users, model.n_items, model.users.device
    users, targets, seen_by = sets or ranking_sets(seen, held, n_users, n_items, relevant)
    totals = torch.zeros(3, dtype=torch.float64)
    for lo in range(0, len(users), _USERS):
        chunk = users[lo : lo + _USERS]
        chunk = chunk.to(device)
        # forward's scores as (users, items) matmuls: 5x faster than pair by pair
        scores = model.score_items(model.users[chunk])
        scores = scores.double() - torch.arange(n_items, device=device).double() * 1e-12  # ties: the lower row first
        for row, user in enumerate(chunk.tolist()):
            scores[row, seen_by.get(user, [])] = -math.inf
        top = scores.topk(min(k, n_items), dim=1).indices.cpu()
        for row, user in enumerate(chunk.tolist()):
            totals += torch.tensor(_one_user(top[row].tolist(), targets[user], k))
    means = (totals / len(users)).tolist() if len(users) else [math.nan] * 3
    return dict(zip((f"ndcg_at_{k}", f"recall_at_{k}", f"map_at_{k}"), means))


def _one_user(ranked: list[int], relevant: set[int], k: int) -> tuple[float, float, float]:
    """(NDCG, recall, average precision) at k of one ranked list against its relevant set."""
    hits = [item in relevant for item in ranked[:k]]
    dcg = sum(1 / math.log2(i + 2) for i, hit in enumerate(hits) if hit)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    found, precision_sum = 0, 0.0
    for i, hit in enumerate(hits):
        if hit:
            found += 1
            precision_sum += found / (i + 1)
    return dcg / ideal, found / len(relevant), precision_sum / min(k, len(relevant))


def _relevant_sets(users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, dict[int, set[int]]]:
    """The users with relevant rows (sorted) and each one's set of relevant item rows."""
    sets: dict[int, set[int]] = {}
    for user, item in zip(users.tolist(), items.tolist()):
        sets.setdefault(user, set()).add(item)
    return torch.tensor(sorted(sets), dtype=torch.int64), sets


def _seen_sets(seen: Interactions, n_users: int, n_items: int) -> dict[int, list[int]]:
    """Each user's fitted item rows (the items `recommend` never proposes to them)."""
    by_user: dict[int, list[int]] = {}
    mask = (seen.users < n_users) & (seen.items < n_items)
    for user, item in zip(seen.users[mask].tolist(), seen.items[mask].tolist()):
        by_user.setdefault(user, []).append(item)
    return by_user


def popularity_model(seen: Interactions, n_users: int, n_items: int,
                     rating_scale: tuple[float, float]) -> MatrixFactorization:
    """Ranks items by how many fitted rows they have (the popularity baseline): item bias =
    count / max count, the same for every user (its ratings mean nothing; only its order)."""
    model = MatrixFactorization(n_users, n_items, 0, 0.0, rating_scale)
    counts = torch.bincount(seen.items[seen.items < n_items], minlength=n_items).double()
    with torch.no_grad():
        model.items[:-1, ITEM_BIAS] = (counts / counts.max().clamp_min(1)).float()
    return model
