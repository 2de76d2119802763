"""SVD++'s implicit blocks in the mf family: the closed-form step equals autograd's, every optimizer
learns with them (test_trainer), and the exported tables are the folded ones."""

import pytest
import torch

from pipeline import ingest
from pipeline.model import MatrixFactorization
from pipeline.split import split
from pipeline.training import TrainConfig, fit

from test_trainer import _fit


@pytest.fixture(scope="module")
def tiny():
    """40 users x 25 items, 300 ratings: small enough for autograd over dense fold matrices."""
    return split(ingest.synthetic(40, 25, 300, rank=2, noise=0.1, seed=3), seed=0)


def _autograd_step(rows, config, n_users, n_items, seed, sparse):
    """One full-batch step from fit's starting point, by autograd: the expected scored tables."""
    k, width = config.factors, config.factors + 2
    start = MatrixFactorization(n_users, n_items, k, rows.ratings.double().mean().item())
    start.reset_parameters(torch.Generator().manual_seed(seed), config.init_std)
    P, Q = start.users.detach().clone().requires_grad_(), start.items.detach().clone().requires_grad_()
    Y = torch.zeros(n_items + 1, width, requires_grad=True)
    Z = torch.zeros(n_users + 1, width, requires_grad=True)
    u, i, r = rows.users, rows.items, rows.ratings
    A = torch.zeros(n_users + 1, n_items + 1).index_put_((u, i), torch.ones(len(u)), accumulate=True)
    C = A.T.clone()
    A, C = A / A.sum(1, keepdim=True).clamp_min(1).sqrt(), C / C.sum(1, keepdim=True).clamp_min(1).sqrt()
    U, V = P + A @ Y, Q + C @ Z
    err = (U[u] * V[i]).sum(1) + start.global_mean - r
    reads_y, reads_z = (A[u] > 0).float(), (C[i] > 0).float()  # the block rows each example reads
    l2 = config.l2 / 2 * (P[u].square().sum() + Q[i].square().sum()
                          + (reads_y @ Y.square().sum(1)).sum() + (reads_z @ Z.square().sum(1)).sum())
    loss = (err.square().sum() / 2 + l2) / (1 if sparse else len(u))
    loss.backward()
    learned_u, learned_i = torch.ones(width), torch.ones(width)
    learned_u[k + 1] = learned_i[k] = 0.0  # the constant-1 columns do not move
    with torch.no_grad():
        P1, Q1 = P - config.lr * P.grad * learned_u, Q - config.lr * Q.grad * learned_i
        Y1, Z1 = -config.lr * Y.grad * learned_u, -config.lr * Z.grad * learned_i
        return P1 + A @ Y1, Q1 + C @ Z1


@pytest.mark.parametrize("optimizer", ["sgd", "sparse_sgd"])
def test_one_step_equals_autograd_on_the_folded_tables(tiny, optimizer):
    rows = tiny.part("train")
    config = TrainConfig(factors=3, optimizer=optimizer, implicit="both", lr=0.05, weight_decay=0.0, l2=0.1,
                         epochs=1, batch_size=len(rows), init_std=0.3)
    model = fit(rows, config, seed=5, device="cpu", **tiny.dims).model  # no valid data: the last step's tables
    U, V = _autograd_step(rows, config, tiny.n_users, tiny.n_items, seed=5, sparse=optimizer == "sparse_sgd")
    # the known rows (a fitted model's fallback row is their mean: test_trainer)
    torch.testing.assert_close(model.users[:-1], U[:-1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.items[:-1], V[:-1], atol=1e-5, rtol=1e-4)


def test_implicit_fits_are_deterministic_and_differ_from_plain(small_split):
    config = TrainConfig(factors=4, optimizer="adam", lr=0.02, weight_decay=0.0, epochs=2, implicit="user")
    a, b = _fit(small_split, config, seed=3), _fit(small_split, config, seed=3)
    plain = _fit(small_split, TrainConfig(**{**config.to_dict(), "implicit": "none"}), seed=3)
    assert torch.equal(a.model.users, b.model.users) and [h[1:] for h in a.history] == [h[1:] for h in b.history]
    assert not torch.equal(a.model.users, plain.model.users)
