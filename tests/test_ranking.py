"""Ranking metrics (pipeline.ranking) against small cases computed by hand."""

import math

import pytest
import torch

from pipeline.model import ITEM_BIAS, MatrixFactorization
from pipeline.ranking import popularity_model, ranking_metrics
from pipeline.split import Interactions


def rows(*triples) -> Interactions:
    users, items, ratings = zip(*triples) if triples else ((), (), ())
    return Interactions(torch.tensor(users, dtype=torch.int64), torch.tensor(items, dtype=torch.int64),
                        torch.tensor(ratings, dtype=torch.float32))


def ranked_by_item(*biases) -> MatrixFactorization:
    """Three users; items ranked by their biases, the same for every user."""
    model = MatrixFactorization(3, len(biases), 0, 3.0)
    with torch.no_grad():
        model.items[:-1, ITEM_BIAS] = torch.tensor(biases)
    return model


def test_the_metrics_of_a_small_case_computed_by_hand():
    model = ranked_by_item(0.5, 0.4, 0.3, 0.2, 0.1)
    seen = rows((0, 0, 5.0))  # user 0 has item 0 already: it is never proposed to them
    held = rows((0, 1, 2.0), (0, 2, 4.0), (0, 4, 5.0),  # user 0: relevant {2, 4}; ranked 1, 2, 3, 4
                (1, 0, 4.0),                           # user 1: relevant {0}; ranked 0, 1, ...
                (2, 3, 3.0))                           # user 2: nothing relevant, not counted
    got = ranking_metrics(model, seen, held, k=2)
    # user 0, top 2 = [1, 2]: one hit at rank 2; user 1, top 2 = [0, 1]: a hit at rank 1
    ndcg0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert got == pytest.approx({"ndcg_at_2": (ndcg0 + 1) / 2, "recall_at_2": (0.5 + 1) / 2,
                                 "map_at_2": ((1 / 2) / 2 + 1) / 2})


def test_ties_go_to_the_lower_item_and_unknown_rows_are_left_out():
    model = ranked_by_item(0.0, 0.0, 0.0, 0.0)  # every item ties
    held = rows((0, 1, 5.0), (0, 4, 5.0), (3, 0, 5.0))  # item 4 and user 3 are fallback rows: left out
    got = ranking_metrics(model, rows(), held, k=1)
    assert got == {"ndcg_at_1": 0.0, "recall_at_1": 0.0, "map_at_1": 0.0}  # item 0 comes first, not 1
    assert ranking_metrics(model, rows(), held, k=2) == pytest.approx(
        {"ndcg_at_2": 1 / math.log2(3), "recall_at_2": 1.0, "map_at_2": 0.5})
    nothing = ranking_metrics(model, rows(), rows((0, 1, 3.0)), k=2)
    assert all(math.isnan(v) for v in nothing.values())


def test_the_popularity_baseline_ranks_by_fitted_rows():
    seen = rows((0, 2, 1.0), (1, 2, 1.0), (2, 2, 1.0), (1, 0, 5.0), (2, 0, 5.0), (0, 1, 3.0))
    model = popularity_model(seen, 3, 4, (1.0, 5.0))
    order = model(torch.zeros(4, dtype=torch.int64), torch.arange(4)).argsort(descending=True).tolist()
    assert order == [2, 0, 1, 3]
    held = rows((0, 0, 5.0), (1, 3, 4.0))  # user 0's unseen: 0, 3 -> 0 first; user 1's unseen: 1, 3 -> 1 first
    assert ranking_metrics(model, seen, held, k=1)["recall_at_1"] == pytest.approx(0.5)


def test_a_factor_model_ranks_as_its_forward_scores():
    """The score matrix (one matmul per chunk of users) ranks as `forward`'s pair scores do."""
    generator = torch.Generator().manual_seed(0)
    model = MatrixFactorization(30, 40, 4, 3.5)
    model.reset_parameters(generator, std=0.5)
    seen = rows(*((u, (3 * u) % 40, 4.0) for u in range(30)))
    held = rows(*((u, (7 * u + k) % 40, 5.0) for u in range(30) for k in range(3)))
    got = ranking_metrics(model, seen, held, k=5)
    hits, items = [], torch.arange(40)
    for user in range(30):
        scores = model(torch.full((40,), user), items).detach()
        scores[(3 * user) % 40] = -math.inf
        top = set(scores.topk(5).indices.tolist())
        hits.append(len(top & {(7 * user + k) % 40 for k in range(3)}) / 3)
    assert got["recall_at_5"] == pytest.approx(sum(hits) / 30)
