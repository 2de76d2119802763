import math

import numpy as np
import pytest
import torch

from pipeline.evaluate import baselines, biases_only, evaluate
from pipeline.model import MatrixFactorization, RawIdScorer
from pipeline.split import Interactions


def _model():
    model = MatrixFactorization(3, 2, 2, global_mean=3.0, rating_scale=(1.0, 5.0))
    model.reset_parameters(torch.Generator().manual_seed(0), std=0.5)
    with torch.no_grad():
        model.users[:3, 2] = torch.tensor([0.1, -0.2, 0.3])   # user biases
        model.items[:2, 3] = torch.tensor([0.5, -0.5])        # item biases
    return model


def test_the_score_is_mean_plus_biases_plus_dot():
    model = _model()
    u, i = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 0, 1])
    expected = (3.0 + model.user_bias[u] + model.item_bias[i]
                + (model.user_factors[u] * model.item_factors[i]).sum(1))
    torch.testing.assert_close(model(u, i), expected)


def test_average_fallbacks_makes_the_fallback_the_mean_row_and_centres_the_values_entities_have():
    model = _model()
    known_users, known_items = model.users[:-1].detach().clone(), model.items[:-1].detach().clone()
    table = torch.tensor([[1.0, 2.0, 0.4, 0.0], [-3.0, 0.5, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]])
    model.side_tables = {"user": [table.clone()]}
    weights = torch.tensor([2.0, 1.0, 0.0])  # value 0: two users' (weight 1 each), 1: one's, 2: no known user's
    model.average_fallbacks({"user": [weights]})
    torch.testing.assert_close(model.users[:-1].detach(), known_users)  # known rows never move
    torch.testing.assert_close(model.items[:-1].detach(), known_items)
    torch.testing.assert_close(model.users[-1].detach(), known_users.mean(0))
    torch.testing.assert_close(model.items[-1].detach(), known_items.mean(0))
    centred = model.side_tables["user"][0]
    torch.testing.assert_close(weights @ centred, torch.zeros(4))  # the known users' values sum to zero
    torch.testing.assert_close(centred[0] - centred[1], table[0] - table[1])  # differences kept
    assert torch.equal(centred[2], table[2]) and (centred[:, -1] == 0).all()  # unseen value, constant column


def test_raw_ids_map_through_the_sorted_buffer_and_unknowns_fall_back():
    model = _model()
    scorer = RawIdScorer(model, torch.tensor([10, 20, 30]), torch.tensor([7, 99]))
    pairs = torch.tensor([[20, 99], [30, 7], [5, 7], [20, 1000], [5, 1000]])
    expected = model.predict(torch.tensor([1, 2, 3, 1, 3]), torch.tensor([1, 0, 0, 2, 2]))
    torch.testing.assert_close(scorer(pairs), expected)
    assert scorer(pairs)[4].item() == pytest.approx(3.0)  # unknown user and item: the global mean


def test_rmse_and_mae_are_exact_over_all_rows():
    model = _model()
    g = torch.Generator().manual_seed(1)
    data = Interactions(torch.randint(0, 3, (1000,), generator=g), torch.randint(0, 2, (1000,), generator=g),
                        torch.rand(1000, generator=g) * 4 + 1)
    err = (model.predict(data.users, data.items) - data.ratings).detach().double().numpy()
    m = evaluate(model, data)
    assert m.rmse == pytest.approx(math.sqrt(np.mean(err**2)), rel=1e-9)
    assert m.mae == pytest.approx(np.mean(np.abs(err)), rel=1e-9)
    assert m.n == 1000


def test_biases_only_beats_the_global_mean(small_split):
    dims = (small_split.n_users, small_split.n_items, small_split.ratings.rating_scale)
    ref = baselines(small_split.part("train"), small_split.part("valid"), *dims)
    assert ref["biases_only"].rmse < ref["global_mean"].rmse - 0.05
    model = biases_only(small_split.part("train"), *dims)
    assert model.factors == 0 and model.user_bias.abs().sum() > 0
