"""Ordinal output for the bayes family (issue 19 item 3): the ordered probit's draws, its cutpoints
recovered from data made with known ones, the link that collapses the posterior into one scorer,
and the scorer equal to the trainer's own predictions for every combination of blocks and outputs."""

import math

import numpy as np
import pytest
import torch
from test_new_users import _data

from pipeline.evaluate import evaluate
from pipeline.model import FeatureScorer, OrdinalMF, ordinal_mean
from pipeline.training import IMPLICIT, TrainConfig, fit, refit
from pipeline.training import gibbs, ordinal
from pipeline.training.fitting import _feature_folds


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_truncated_normal_draws_stay_in_their_interval_with_its_moments():
    n = 200_000
    a, b = torch.full((n,), 0.5, dtype=torch.float64), torch.full((n,), 2.0, dtype=torch.float64)
    x = ordinal._truncated_normal(a, b, _g())
    assert ((x > 0.5) & (x <= 2.0)).all()
    # the standard normal restricted to (0.5, 2]: mean (φ(a) − φ(b)) / (Φ(b) − Φ(a))
    phi = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    mass = 0.5 * (math.erf(2 / math.sqrt(2)) - math.erf(0.5 / math.sqrt(2)))
    assert x.mean().item() == pytest.approx((phi(0.5) - phi(2.0)) / mass, abs=0.005)
    # far tails, open ends, both signs: finite and inside
    a = torch.tensor([8.0, -math.inf, -50.0, 40.0], dtype=torch.float64)
    b = torch.tensor([math.inf, -9.0, -49.0, 41.0], dtype=torch.float64)
    x = ordinal._truncated_normal(a, b, _g())
    assert torch.isfinite(x).all() and (x > a).all() and (x <= b).all()


def test_the_interval_log_probability_is_exact_and_finite_in_the_tails():
    a = torch.tensor([-1.0, 0.3, -math.inf, 30.0, -40.0], dtype=torch.float64)
    b = torch.tensor([0.5, 2.0, -1.0, 31.0, -39.0], dtype=torch.float64)
    direct = torch.log(torch.special.ndtr(b[:3]) - torch.special.ndtr(a[:3]))
    logp = ordinal._log_interval(a, b)
    torch.testing.assert_close(logp[:3], direct)
    assert torch.isfinite(logp).all() and (logp[3:] < -400).all()


def test_the_sampled_cutpoints_find_the_ones_the_ratings_were_made_with():
    """Latent z = f + ε (α = 1) cut at 1.5, 2.2, 3.7, 4.5 into 1-5 stars, f known: the inner
    cutpoints (held outer ones at the levels' midpoints) settle at 2.2 and 3.7."""
    g = _g(3)
    f = 3.0 + 1.2 * torch.randn(60_000, generator=g, dtype=torch.float64)
    z = f + torch.randn(60_000, generator=g, dtype=torch.float64)
    ratings = (1.0 + torch.bucketize(z, torch.tensor([1.5, 2.2, 3.7, 4.5], dtype=torch.float64))).float()
    probit = ordinal.OrderedProbit(ratings, _g(4))
    assert probit.cutpoints.tolist() == [1.5, 2.5, 3.5, 4.5]  # the start: midpoints
    path = []
    for _ in range(300):
        probit.latents(f.float(), torch.tensor(1.0))
        path.append(probit.cutpoints.clone())
    settled = torch.stack(path[100:]).mean(0)
    assert settled[[0, 3]].tolist() == [1.5, 4.5]
    np.testing.assert_allclose(settled[1:3], [2.2, 3.7], atol=0.03)


def test_too_many_or_too_few_levels_and_mf_are_refused(small_split):
    config = TrainConfig(family="bayes", factors=3, epochs=3, output="ordinal", noise_precision=1.0)
    with pytest.raises(ValueError, match=r"output='ordinal': the training ratings take \d+ distinct value\(s\): "
                                         r"expected 2 to 20 ordered levels"):
        fit(small_split.part("train"), config, **small_split.dims)  # synthetic ratings: continuous
    with pytest.raises(ValueError, match="take 1 distinct"):
        ordinal.OrderedProbit(torch.full((10,), 4.0), _g())
    with pytest.raises(ValueError, match="output='ordinal': expected regression with family mf"):
        TrainConfig(output="ordinal")
    with pytest.raises(ValueError, match="output='probit': expected one of regression, ordinal"):
        TrainConfig(family="bayes", output="probit")


def test_the_link_is_the_mean_over_a_normal_posterior():
    """E over f' ~ N(f, v) of the probit's expected rating at noise σ is the link at
    1 / sqrt(σ² + v): what lets the posterior collapse into one scorer."""
    cutpoints, levels = torch.tensor([1.5, 2.4, 3.4, 4.5], dtype=torch.float64), torch.arange(1.0, 6.0).double()
    f, sigma, v = torch.tensor([1.2, 2.9, 3.6, 5.3], dtype=torch.float64), 0.8, 0.3
    draws = f + v**0.5 * torch.randn(400_000, 4, generator=_g(), dtype=torch.float64)
    monte_carlo = ordinal_mean(draws, cutpoints, torch.tensor(1 / sigma), levels).mean(0)
    linked = ordinal_mean(f, cutpoints, torch.tensor((sigma**2 + v) ** -0.5), levels)
    np.testing.assert_allclose(linked, monte_carlo, atol=2e-3)
    assert ((linked > 1) & (linked < 5)).all()


@pytest.fixture(scope="module")
def featured():
    """Ratings in 1-5 stars, user and item side features (tests/test_new_users.py's)."""
    return _data("int", stars=True)[0]


@pytest.mark.parametrize("output", ["regression", "ordinal"])
@pytest.mark.parametrize("implicit", IMPLICIT)
@pytest.mark.parametrize("features", IMPLICIT)
def test_the_scorer_is_the_trainers_own_prediction_for_every_block_and_output(featured, implicit, features, output):
    """The engine's running prediction of the valid rows (its valid RMSE's) against its model and
    the feature scorer the model is exported as, element by element, for known ids."""
    data = featured
    config = TrainConfig(family="bayes", factors=3, epochs=9, burn_in=3, init_std=0.1, output=output,
                         noise_precision=1.2, implicit=implicit, features=features)
    valid = data.part("valid")
    engine = gibbs.GibbsEngine(data.part("train"), config, **data.dims, valid=valid, generator=_g(),
                               folds=_feature_folds(features, data.features, "cpu"))
    for sweep in range(1, 10):
        engine.epoch(sweep)
        rmse = engine.valid_rmse()[0]
    own = engine.running / len(engine.kept)
    if output == "ordinal":
        cutpoints, scale = ordinal.link(*gibbs._link_terms(engine.kept), engine.fitted_sum / len(engine.kept))
        own = ordinal_mean(own, cutpoints, scale, engine.sampler.probit.levels.double())
        assert ((own >= 1) & (own <= 5)).all()
    model = engine.model(0, None)
    assert isinstance(model, OrdinalMF) == (output == "ordinal")
    assert bool(model.side_tables) == (features != "none")
    with torch.no_grad():
        np.testing.assert_allclose(model(valid.users, valid.items), own, atol=1e-4)
        user_ids, item_ids = torch.from_numpy(data.user_ids), torch.from_numpy(data.item_ids)
        pairs = torch.stack([user_ids[valid.users], item_ids[valid.items]], 1)
        none = torch.zeros(0, 3, dtype=torch.int64)
        served = FeatureScorer(model, user_ids, item_ids)(pairs, none, none)
    np.testing.assert_allclose(served, own.clamp(1, 5), atol=1e-4)
    assert evaluate(model, valid).rmse == pytest.approx(rmse, abs=1e-4)


def test_chains_pool_into_the_posterior_of_all_their_samples(featured):
    """`average` of two ordinal chains equals the scorer built from both chains' samples at once."""
    data = featured
    config = TrainConfig(family="bayes", factors=3, epochs=8, burn_in=2, init_std=0.1, output="ordinal",
                         noise_precision=1.0, implicit="both")
    engines = []
    for seed in (0, 1):
        engine = gibbs.GibbsEngine(data.part("train"), config, **data.dims, valid=None, generator=_g(seed))
        for sweep in range(1, 9):
            engine.epoch(sweep)
        engines.append(engine)
    sampler = engines[0].sampler
    fitted = (sampler.user.own, sampler.user.other)
    pooled = gibbs.average([e.model(0, None) for e in engines], fitted)
    samples = engines[0].kept + engines[1].kept
    latent = gibbs.export(samples, 3, sampler.mu, data.ratings.rating_scale)
    direct = ordinal.scorer(latent, *gibbs._link_terms(samples), fitted, sampler.probit.levels)
    test = data.part("test")
    with torch.no_grad():
        np.testing.assert_allclose(pooled(test.users, test.items), direct(test.users, test.items), atol=1e-4)
        assert not torch.allclose(pooled(test.users, test.items), engines[0].model(0, None)(test.users, test.items),
                                  atol=1e-3)
    assert pooled.scale.item() == pytest.approx(direct.scale.item(), rel=1e-5)


def test_refit_chains_and_ranking_take_the_ordinal_scorer(featured):
    data = featured
    config = TrainConfig(family="bayes", factors=3, epochs=6, burn_in=2, init_std=0.1, output="ordinal",
                         noise_precision=1.0)
    first = fit(data.part("train+valid"), config, seed=5, **data.dims).model
    again = fit(data.part("train+valid"), config, seed=5, **data.dims).model
    assert torch.equal(first.users, again.users) and torch.equal(first.cutpoints, again.cutpoints)  # seeded
    model = refit(data.part("train+valid"), config, 6, chains=2, seed=5, **data.dims).model
    assert isinstance(model, OrdinalMF)
    with torch.no_grad():
        rows = torch.arange(4)
        grid = model.score_items(model.users[rows])  # ranking's matmul path
        pairs = model(rows.repeat_interleave(model.n_items), torch.arange(model.n_items).repeat(4))
    np.testing.assert_allclose(grid.reshape(-1), pairs, atol=1e-5)
