"""The Bayesian family: its conditionals, its known answers on synthetic data, determinism, and
the export into the one raw-id scorer."""

import math

import numpy as np
import pytest
import torch

from pipeline.evaluate import evaluate
from pipeline.model import RawIdScorer
from pipeline.training import IMPLICIT, TrainConfig, fit, refit
from pipeline.training import block_draw
from pipeline.training import gibbs as bayes
from pipeline.training.blocks import Side


def _config(**changes):
    return TrainConfig(**{**dict(family="bayes", factors=4, epochs=12, burn_in=4, init_std=0.1), **changes})


def test_the_gaussian_draws_have_the_conditional_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    precision, rhs = a.expand(20_000, 2, 2), torch.tensor([1.0, -1.0]).expand(20_000, 2)
    draws = bayes._gaussian(precision.contiguous(), rhs.contiguous(), g)
    covariance = torch.linalg.inv(a)
    np.testing.assert_allclose(draws.mean(0), covariance @ torch.tensor([1.0, -1.0]), atol=0.02)
    np.testing.assert_allclose(torch.cov(draws.T), covariance, atol=0.02)


def test_the_hyperparameters_follow_the_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 3, generator=g) * torch.tensor([0.5, 1.0, 2.0]) + torch.tensor([1.0, 0.0, -1.0])
    mean, lam = bayes._hyper(x, g)
    np.testing.assert_allclose(mean, [1.0, 0.0, -1.0], atol=0.1)
    np.testing.assert_allclose(lam, [4.0, 1.0, 0.25], rtol=0.1)


def _fold(users: int, items: int, density: float, seed: int) -> Side:
    """A user Side (implicit fold A[u, j] = |N(u)|^-1/2) over a random pattern; width 4 (d = 3)."""
    g = torch.Generator().manual_seed(seed)
    rated = torch.rand(users, items, generator=g) < density
    rated[torch.arange(users), torch.randint(items, (users,), generator=g)] = True  # every user rates
    own, other = rated.nonzero(as_tuple=True)
    return Side(own, other, users, items, 3, 4)


def _dense(side: Side, S: torch.Tensor, lam: torch.Tensor, alpha: float) -> torch.Tensor:
    """The block's precision H = Λ ⊗ I + α Σ_u a_u a_uᵀ ⊗ S_u, (cols d, cols d), rows of W flattened;
    lam (d,) for every row or (cols, d) per row."""
    A = side.A.to_dense().double()
    H = torch.diag(lam.double().expand(side.other_rows, S.shape[1]).reshape(-1))
    for u in range(side.rows):
        H += alpha * torch.kron(A[u, :, None] * A[u, None, :], S[u].double())
    return H


def _observations(side: Side) -> torch.Tensor:
    return torch.bincount(side.own, minlength=side.rows)


def test_the_fold_basis_holds_the_count_weighted_grams_top_eigenpairs():
    side = _fold(60, 40, 0.2, seed=0)
    A, n = side.A.to_dense().double(), _observations(side).double()
    exact = torch.linalg.eigvalsh(A.T @ (n[:, None] * A))
    full = block_draw.FoldBasis(side, _observations(side), torch.Generator().manual_seed(0), cap=100)
    np.testing.assert_allclose(full.s, exact, rtol=1e-4, atol=1e-3)  # every eigenvalue: Q spans it all
    np.testing.assert_allclose(full.Q.T @ full.Q, torch.eye(40), atol=1e-5)
    top = block_draw.FoldBasis(side, _observations(side), torch.Generator().manual_seed(0), cap=4)
    assert top.Q.shape == (40, 4) and full.observations == top.observations == n.sum().item()
    np.testing.assert_allclose(top.s[-1], exact[-1], rtol=1e-4)


def test_the_preconditioner_inverts_the_kronecker_approximation_exactly_where_it_holds():
    """Every row's scatter S_u = n_u T and a basis spanning G: then M = H, and one CG step solves."""
    side, g = _fold(12, 7, 0.5, seed=1), torch.Generator().manual_seed(1)
    n = _observations(side)
    basis = block_draw.FoldBasis(side, n, g, cap=100)
    T = torch.tensor([[1.0, 0.3, 0.1], [0.3, 0.8, 0.0], [0.1, 0.0, 0.5]])
    S, lam, alpha = n[:, None, None] * T, torch.tensor([2.0, 5.0, 9.0]), 1.7
    H = _dense(side, S, lam, alpha)
    r = torch.randn(7, 3, generator=g)
    precondition = basis.preconditioner(lam, torch.tensor(alpha), S.sum(0) / basis.observations,
                                        torch.ones(7, 3))  # no complement here: D is never used
    expected = torch.linalg.solve(H, r.double().reshape(-1)).reshape(7, 3)
    np.testing.assert_allclose(precondition(r), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("per_row", [False, True])
def test_a_converged_block_draw_has_the_conditional_mean_and_covariance(monkeypatch, per_row):
    """One prior for the block, or one per row (the feature groups drawn as one block)."""
    monkeypatch.setattr(block_draw, "_CG_ITERATIONS", 20)  # 21 unknowns: CG is exact by then
    side, g = _fold(9, 7, 0.4, seed=2), torch.Generator().manual_seed(2)
    X = torch.randn(9, 5, 3, generator=g)
    S = X.mT @ X  # any positive semidefinite scatter per row
    L = torch.linalg.cholesky(S + 1e-6 * torch.eye(3))
    t, alpha = torch.randn(9, 3, generator=g), 1.3
    mean, lam = torch.tensor([0.5, 0.0, -0.5]), torch.tensor([2.0, 1.0, 4.0])
    if per_row:  # rows 0-2 one group, 3-6 another with other means and 3x the precision
        mean = torch.cat([mean.expand(3, -1), (mean + 1).expand(4, -1)])
        lam = torch.cat([lam.expand(3, -1), (3 * lam).expand(4, -1)])
    basis = block_draw.FoldBasis(side, _observations(side), g, cap=3)  # partial: the complement is used
    draws = []
    for _ in range(800):
        noise = (L @ torch.randn(9, 3, 1, generator=g)).squeeze(2)  # the caller's data noise, covariance S_u
        residual = alpha * t + alpha**0.5 * noise
        draws.append(block_draw.draw_block(torch.zeros(7, 3), side, S, residual, torch.tensor(alpha),
                                           (mean, lam), basis, g).reshape(-1))
    draws = torch.stack(draws).double()
    H = _dense(side, S, lam, alpha)
    covariance = torch.linalg.inv(H)
    expected = covariance @ (lam * mean + alpha * side.unfold(t)).double().reshape(-1)
    np.testing.assert_allclose(draws.mean(0), expected, atol=4 * covariance.diagonal().max().sqrt() / 800**0.5)
    np.testing.assert_allclose(torch.cov(draws.T), covariance, atol=0.12 * covariance.diagonal().max())


@pytest.mark.parametrize("implicit", IMPLICIT)
def test_it_finds_the_low_rank_truth_and_its_noise_level(small_split, implicit):
    result = fit(small_split.part("train"), _config(implicit=implicit, epochs=30, burn_in=10),
                 valid=small_split.part("valid"), device="cpu", **small_split.dims)
    assert result.best_valid_rmse < 0.25 * 1.3  # the noise std is 0.25
    assert result.best_valid_rmse == pytest.approx(evaluate(result.model, small_split.part("valid")).rmse, abs=1e-5)


def test_the_noise_precision_is_estimated():
    from pipeline import ingest
    from pipeline.split import split

    data = split(ingest.synthetic(400, 200, 20_000, rank=3, noise=0.5, seed=3), seed=0)
    train = data.part("train")
    sampler = bayes._Sampler(train, data.n_users, data.n_items, 3, "both", 0.1, torch.Generator().manual_seed(0))
    for _ in range(25):
        sampler.sweep()
    assert sampler.alpha.item() ** -0.5 == pytest.approx(0.5, rel=0.15)


def test_a_fixed_noise_precision_is_held_and_sets_how_closely_the_chain_fits():
    from pipeline import ingest
    from pipeline.split import split

    data = split(ingest.synthetic(400, 200, 20_000, rank=3, noise=0.5, seed=3), seed=0)
    train_mse = {}
    for alpha in (0.25, 4.0, 100.0):  # the true noise's precision is 4
        sampler = bayes._Sampler(data.part("train"), data.n_users, data.n_items, 8, "none", 0.1,
                                 torch.Generator().manual_seed(0), noise_precision=alpha)
        for _ in range(15):
            train_mse[alpha] = sampler.sweep().item()
            assert sampler.alpha.item() == alpha
    assert train_mse[0.25] > train_mse[4.0] > train_mse[100.0]
    assert train_mse[4.0] ** 0.5 == pytest.approx(0.5, rel=0.15)


@pytest.mark.parametrize("implicit", IMPLICIT)
def test_a_sweeps_train_mse_is_the_samples_own(small_split, implicit):
    """The sweep sums the squared errors from the item step's S and t, without per-row gathers."""
    data = small_split
    sampler = bayes._Sampler(data.part("train"), data.n_users, data.n_items, 3, implicit, 0.1,
                             torch.Generator().manual_seed(0))
    for _ in range(3):
        mse = sampler.sweep()
    U, V = sampler.totals()
    direct = (sampler.target - (U[sampler.user.own] * V[sampler.user.other]).sum(1)).double().square().mean()
    assert mse.item() == pytest.approx(direct.item(), rel=1e-5)


def test_the_exported_scorer_is_the_posterior_mean(small_split):
    g = torch.Generator().manual_seed(1)
    data = small_split
    sampler = bayes._Sampler(data.part("train"), data.n_users, data.n_items, 3, "both", 0.1, g)
    samples = []
    for _ in range(5):
        sampler.sweep()
        samples.append(tuple(t.clone() for t in sampler.totals()))
    test = data.part("test")
    direct = torch.stack([sampler.mu + (U[test.users] * V[test.items]).sum(1) for U, V in samples]).mean(0)
    model = bayes.export(samples, 3, sampler.mu, data.ratings.rating_scale)
    with torch.no_grad():
        exported, served = model(test.users, test.items), scorer_of(model, data)(pairs_of(data))
    np.testing.assert_allclose(exported, direct, atol=1e-4)
    # and through the raw-id export wrapper, as it is logged
    np.testing.assert_allclose(served, direct.clamp(*data.ratings.rating_scale), atol=1e-4)


def scorer_of(model, data):
    return RawIdScorer(model, torch.from_numpy(data.user_ids), torch.from_numpy(data.item_ids))


def pairs_of(data):
    return torch.from_numpy(data.ratings.frame[["user_id", "item_id"]].to_numpy()[data.test_rows])


def test_same_seed_same_model_other_seed_other_model(small_split):
    def tables(seed):
        model = fit(small_split.part("train"), _config(implicit="both"), seed=seed, device="cpu",
                    **small_split.dims).model
        return model.users.detach(), model.items.detach()

    a, b, c = tables(0), tables(0), tables(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_refit_keeps_the_best_sweep_count_and_early_stopping_works(small_split):
    config = _config(epochs=40, burn_in=3, patience=2)
    seen = []
    result = fit(small_split.part("train"), config, valid=small_split.part("valid"), device="cpu",
                 callback=lambda sweep, mse, rmse: seen.append(sweep), **small_split.dims)
    assert seen == list(range(1, len(seen) + 1)) and len(result.history) == len(seen)
    assert result.best_epoch > config.burn_in and math.isfinite(result.best_valid_rmse)
    final = refit(small_split.part("train+valid"), config, result.best_epoch, device="cpu", **small_split.dims)
    assert len(final.history) == result.best_epoch
    assert final.model.users.shape[1] == (result.best_epoch - config.burn_in) * 4 + 2


def test_bad_bayes_configs_are_refused():
    with pytest.raises(ValueError, match="implicit='items': expected one of none, user, item, both"):
        TrainConfig(implicit="items")
    with pytest.raises(ValueError, match="burn_in=20"):
        TrainConfig(family="bayes", epochs=20, burn_in=20)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="noise_precision=.*expected > 0 and finite, or None"):
            TrainConfig(family="bayes", noise_precision=bad)
    assert "noise_precision" not in TrainConfig(noise_precision=2.0).used()  # mf's: unused
    assert TrainConfig(family="bayes", noise_precision=2.0).used()["noise_precision"] == 2.0


def test_many_samples_reduce_exactly_to_the_smaller_side():
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(4):  # 4 samples x 3 factors = 12 columns > 7 user rows
        U, V = torch.randn(7, 5, generator=g), torch.randn(12, 5, generator=g)
        U[:, 4], V[:, 3] = 1.0, 1.0  # the constant columns of [p, b_u, 1] and [q, 1, b_i]
        samples.append((U, V))
    model = bayes.export(samples, 3, 3.0, (-100.0, 100.0))
    assert model.factors == 7
    users, items = torch.arange(7).repeat_interleave(12), torch.arange(12).repeat(7)
    direct = torch.stack([3.0 + (U[users] * V[items]).sum(1) for U, V in samples]).mean(0)
    with torch.no_grad():
        np.testing.assert_allclose(model(users, items), direct, atol=1e-4)


@pytest.mark.parametrize("users", [7, 30])
def test_feature_tables_are_averaged_and_reduced_with_their_side(users):
    """A new entity's row from its feature values scores as the posterior mean of its folded rows,
    whether the samples' columns are reduced (4 samples x 3 factors > 7 user rows) or not."""
    g = torch.Generator().manual_seed(0)
    samples = []
    for _ in range(4):
        U, V = torch.randn(users, 5, generator=g), torch.randn(12, 5, generator=g)
        W, X = torch.randn(3, 5, generator=g), torch.randn(2, 5, generator=g)  # a user group, an item group
        U[:, 4], V[:, 3], W[:, 4], X[:, 3] = 1.0, 1.0, 0.0, 0.0
        samples.append((U, V, {"user": [W], "item": [X]}))
    model = bayes.export(samples, 3, 3.0, (-100.0, 100.0))
    assert model.factors == (7 + 3 if users == 7 else 12)
    user = lambda U, W: U[-1] + (W[0] + W[2]) / 2**0.5  # noqa: E731 (values 0 and 2 of the group)
    item = lambda V, X: V[-1] + X[1]  # noqa: E731
    new_user, new_item = model.feature_rows("user", [[np.array([0, 2])]]), model.feature_rows("item", [[np.array([1])]])
    cases = [(new_user.expand(11, -1), model.items[:-1], lambda U, V, W, X: user(U, W) @ V[:-1].T),
             (model.users[:-1], new_item.expand(users - 1, -1), lambda U, V, W, X: U[:-1] @ item(V, X)),
             (new_user, new_item, lambda U, V, W, X: user(U, W) @ item(V, X))]
    for users_, items_, direct in cases:
        expected = 3.0 + torch.stack([direct(U, V, t["user"][0], t["item"][0]) for U, V, t in samples]).mean(0)
        with torch.no_grad():
            np.testing.assert_allclose(model.score_rows(users_, items_), expected.reshape(-1), atol=1e-4)


def test_each_kept_sample_has_its_own_feature_tables(small_split):
    """The engine keeps every sample's feature tables, not views of the live ones a sweep overwrites."""
    from pipeline.features import SideFeatures
    from pipeline.training.fitting import _feature_folds

    data = small_split
    ids = data.user_ids
    values = {"g": [str(u % 3) for u in range(len(ids))], "h": [str(u % 2) for u in range(len(ids))]}
    blocks = SideFeatures.build(ids, values).blocks(ids)
    folds = _feature_folds("user", {"user": blocks}, torch.device("cpu"))
    engine = bayes.GibbsEngine(data.part("train"), _config(epochs=6, burn_in=2), n_users=data.n_users,
                               n_items=data.n_items, rating_scale=(1.0, 5.0), valid=None,
                               generator=torch.Generator().manual_seed(0), folds=folds)
    for sweep in range(1, 7):
        engine.epoch(sweep)
    first, last = engine.kept[0][2]["user"], engine.kept[-1][2]["user"]
    assert len(engine.kept) == 4 and len(first) == 2
    assert all(not torch.equal(a, b) for a, b in zip(first, last))


def test_a_refit_of_several_chains_scores_their_mean(small_split):
    """refit(chains=3): one model whose unclamped scores (and new users' rows from features) are the
    mean of the three chains' posterior means (seeds seed, seed + 1000, seed + 2000)."""
    from pipeline.features import SideFeatures

    data = small_split
    ids = data.user_ids
    features = {"user": SideFeatures.build(ids, {"g": [str(u % 3) for u in range(len(ids))]}).blocks(ids)}
    config, rows = _config(features="user", epochs=8, burn_in=2), data.part("train+valid")
    options = dict(device="cpu", features=features, **data.dims)
    together = refit(rows, config, 8, seed=5, chains=3, **options).model
    alone = [refit(rows, config, 8, seed=5 + 1000 * c, **options).model for c in range(3)]
    test = data.part("test")
    with torch.no_grad():
        np.testing.assert_allclose(together(test.users, test.items),
                                   torch.stack([m(test.users, test.items) for m in alone]).mean(0), atol=1e-4)
        new = [np.array([1])]
        rows_of = lambda m: m.feature_rows("user", [new])  # noqa: E731
        expected = torch.stack([(rows_of(m) @ m.items[:-1].T).squeeze(0) for m in alone]).mean(0)
        np.testing.assert_allclose((rows_of(together) @ together.items[:-1].T).squeeze(0), expected, atol=1e-4)


def test_on_cuda_it_samples_as_well_as_on_the_cpu(small_split, cuda):
    """Other random streams on the GPU, so not the same numbers: the same quality, and the export."""
    config = _config(implicit="both", epochs=20, burn_in=5)
    on_cpu = fit(small_split.part("train"), config, valid=small_split.part("test"), **small_split.dims)
    on_gpu = fit(small_split.part("train"), config, valid=small_split.part("test"), device=cuda, **small_split.dims)
    assert on_gpu.model.users.device.type == "cuda"
    assert on_gpu.best_valid_rmse == pytest.approx(on_cpu.best_valid_rmse, abs=0.02)


def test_the_memory_estimate_is_led_by_the_larger_sides_precision_matrices():
    # 16 R d² bytes: four float32 (R, d, d) batches (S, the prior's diagonal, αS, the precision),
    # R the larger side's rows, d = factors + 1; the rest grows with factors, not factors².
    config = TrainConfig(family="bayes", factors=300, epochs=3, burn_in=1)
    need = config.memory_bytes(1000, 4000)
    leading = 1.1 * 16 * 4001 * 301**2
    assert leading < need < 1.05 * leading
    assert config.memory_bytes(4000, 1000) == need  # which side is larger does not matter
    assert 3.9 < config.replace(factors=601).memory_bytes(1000, 4000) / need < 4.1


def test_the_memory_estimate_counts_the_kept_samples():
    config = TrainConfig(family="bayes", factors=10, epochs=60, burn_in=0)
    more_burn_in = config.replace(burn_in=30)
    assert config.memory_bytes(1000, 2000) > more_burn_in.memory_bytes(1000, 2000)
    assert config.replace(epochs=120).memory_bytes(1000, 2000) > config.memory_bytes(1000, 2000)
