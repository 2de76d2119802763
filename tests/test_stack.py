"""Stacked trials (pipeline.training.fit_stack): K models trained together equal K single fits (sparse_sgd and
every torch.optim rule), each ending on its own; on cuda the graphed epoch equals the CPU's."""

import math

import optuna
import pytest
import torch

from pipeline.split import split
from pipeline.training import TrainConfig, TrainingDiverged, fit, fit_stack, stack_key

SGD = dict(optimizer="sparse_sgd", weight_decay=0.0, batch_size=64)
# Different in everything a model may differ in within one stack.
CONFIGS = [
    TrainConfig(**SGD, factors=8, lr=0.01, l2=0.05, init_std=0.1, epochs=4),
    TrainConfig(**SGD, factors=20, lr=0.02, l2=0.0, l2_bias=0.01, init_std=0.05, epochs=8, lr_decay=0.9, patience=1),
    TrainConfig(**SGD, factors=3, lr=0.02, l2=0.0, l2_bias=0.0, init_std=0.2, epochs=5),
]
SEEDS = [3, 7, 11]


@pytest.fixture(scope="module")
def data(small_ratings):
    return split(small_ratings, test=0.1, valid=0.1, seed=0)


def _single(split, config, seed, **options):
    return fit(split.part("train"), config, valid=split.part("valid"), seed=seed, **split.dims, **options)


def _assert_same_fit(a, b, tol=1e-5):
    assert [h[0] for h in a.history] == [h[0] for h in b.history]
    for x, y in zip(a.history, b.history):
        assert x[1:] == pytest.approx(y[1:], rel=tol, nan_ok=True)
    assert (a.best_epoch, a.stopped_early) == (b.best_epoch, b.stopped_early)
    assert a.best_valid_rmse == pytest.approx(b.best_valid_rmse, rel=tol, nan_ok=True)
    assert a.model.factors == b.model.factors
    torch.testing.assert_close(a.model.users, b.model.users, atol=tol, rtol=tol)
    torch.testing.assert_close(a.model.items, b.model.items, atol=tol, rtol=tol)


@pytest.mark.parametrize("compiled", [False, True], ids=["tensor loop", "numba loop"])
def test_a_stack_equals_its_models_trained_one_by_one(data, compiled):
    stacked = fit_stack(data.part("train"), CONFIGS, SEEDS, valid=data.part("valid"), **data.dims)
    for config, seed, result in zip(CONFIGS, SEEDS, stacked):
        _assert_same_fit(result, _single(data, config, seed, compiled=compiled))
    assert stacked[1].stopped_early  # patience 1 ended it at epoch 4 of 8: it left the stack alone


def _torch_optim_fit(train, config, seed, dims):
    """The reference for the engine's closed-form gradients: one model, autograd on the loss and
    torch.optim, the same start and permutations; per-example L2 λ(|p_u|² + |q_i|²)/2 with l2_bias
    on the biases."""
    from pipeline.model import learned_columns
    from pipeline.training.tables import initial_model, l2_columns

    model = initial_model(config, seed, train.ratings.double().mean().item(), dims, torch.device("cpu"))
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop,
           "adagrad": torch.optim.Adagrad}[config.optimizer]
    options = {"momentum": config.momentum} if config.optimizer == "sgd" else {}
    optimizer = cls([model.users, model.items], lr=config.lr, weight_decay=config.weight_decay, **options)
    l2 = l2_columns(config, config.factors + 2)
    learned = [learned_columns(config.factors + 2, side) for side in ("user", "item")]
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(1, config.epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = config.lr * config.lr_decay ** (epoch - 1)
        perm = torch.randperm(len(train), generator=generator)
        for lo in range(0, len(perm), config.batch_size):
            idx = perm[lo : lo + config.batch_size]
            pu, qi = model.users[train.users[idx]], model.items[train.items[idx]]
            err = (pu * qi).sum(1) + model.global_mean - train.ratings[idx]
            penalty = (pu.square() * l2[0] * learned[0]).sum() + (qi.square() * l2[1] * learned[1]).sum()
            optimizer.zero_grad()
            ((err.square().sum() + penalty) / (2 * len(idx))).backward()
            optimizer.step()
            model.restore_constants()
    return model


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop", "adagrad"])
def test_a_stack_of_dense_optimizers_equals_torch_optim_one_by_one(data, optimizer):
    """Per-model lr, lr_decay, weight decay, momentum, L2 and factors: the stack against each
    model alone, and against autograd's gradients stepped by torch.optim."""
    lr = {"sgd": 0.05, "adam": 0.005, "adamw": 0.005, "rmsprop": 0.002, "adagrad": 0.05}[optimizer]
    common = dict(optimizer=optimizer, batch_size=256, epochs=3)
    configs = [TrainConfig(**common, factors=8, lr=lr, weight_decay=1e-4, l2=0.01, momentum=0.8),
               TrainConfig(**common, factors=16, lr=2 * lr, weight_decay=0.0, l2=0.05, l2_bias=0.0, lr_decay=0.9,
                           init_std=0.1)]
    stacked = fit_stack(data.part("train"), configs, SEEDS[:2], **data.dims)
    for config, seed, result in zip(configs, SEEDS, stacked):
        _assert_same_fit(result, fit(data.part("train"), config, seed=seed, **data.dims))
        reference = _torch_optim_fit(data.part("train"), config, seed, data.dims)
        # the known rows (a fitted model's fallback row is their mean: test_trainer)
        torch.testing.assert_close(result.model.users[:-1], reference.users[:-1], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(result.model.items[:-1], reference.items[:-1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("optimizer", ["sparse_sgd", "adam"])
def test_a_stack_with_implicit_blocks_equals_its_models_one_by_one(data, optimizer):
    extra = dict(weight_decay=0.0) if optimizer == "sparse_sgd" else {}
    configs = [TrainConfig(optimizer=optimizer, implicit="both", batch_size=256, epochs=3, factors=f, lr=lr, l2=l2, **extra)
               for f, lr, l2 in ((4, 0.01, 0.02), (7, 0.02, 0.0))]
    stacked = fit_stack(data.part("train"), configs, SEEDS[:2], valid=data.part("valid"), **data.dims)
    for config, seed, result in zip(configs, SEEDS, stacked):
        _assert_same_fit(result, _single(data, config, seed))


def test_a_model_that_ends_leaves_the_others_as_they_were(data):
    """One model pruned by its callback, one diverging: each ends with its exception, the others
    train exactly as they would alone."""

    def prune_at_2(epoch, train_mse, valid_rmse):
        if epoch == 2:
            raise optuna.TrialPruned("pruned at 2")

    diverging = TrainConfig(**SGD, factors=8, lr=1e4, l2=0.05, epochs=4)
    outcomes = fit_stack(data.part("train"), [*CONFIGS, diverging], [*SEEDS, 5],
                         valid=data.part("valid"), callbacks=[None, prune_at_2, None, None], **data.dims)
    assert isinstance(outcomes[1], optuna.TrialPruned)
    assert isinstance(outcomes[3], TrainingDiverged) and outcomes[3].epoch == 1
    for k in (0, 2):
        _assert_same_fit(outcomes[k], _single(data, CONFIGS[k], SEEDS[k], compiled=False))


def test_without_valid_data_every_epoch_runs_and_the_last_is_kept(data):
    (result,) = fit_stack(data.part("train"), CONFIGS[:1], SEEDS[:1], **data.dims)
    alone = fit(data.part("train"), CONFIGS[0], seed=SEEDS[0], compiled=False, **data.dims)
    assert len(result.history) == 4 and math.isnan(result.best_valid_rmse)
    _assert_same_fit(result, alone)


def test_only_configs_with_one_stack_key_share_a_stack(data):
    assert stack_key(CONFIGS[0]) == ("sparse_sgd", 64, "none", "none")
    assert stack_key(TrainConfig()) == ("adam", 512, "none", "none")
    assert stack_key(TrainConfig(**SGD, implicit="user")) == ("sparse_sgd", 64, "user", "none")
    assert stack_key(TrainConfig(**SGD, features="both")) == ("sparse_sgd", 64, "none", "both")
    assert stack_key(TrainConfig(family="bayes")) is None
    for other in (TrainConfig(**{**SGD, "batch_size": 128}), TrainConfig(batch_size=64), TrainConfig(**SGD, features="user")):
        with pytest.raises(ValueError, match="one stack_key"):
            fit_stack(data.part("train"), [CONFIGS[0], other], [0, 1], **data.dims)


def test_on_cuda_the_graphed_epoch_equals_the_cpu(data, cuda):
    on_cpu = fit_stack(data.part("train"), CONFIGS, SEEDS, valid=data.part("valid"), **data.dims)
    on_gpu = fit_stack(data.part("train"), CONFIGS, SEEDS, valid=data.part("valid"), device=cuda,
                       **data.dims)
    for a, b in zip(on_cpu, on_gpu):  # GPU atomics sum in another order: float tolerance
        assert [h[0] for h in a.history] == [h[0] for h in b.history]
        assert b.best_valid_rmse == pytest.approx(a.best_valid_rmse, rel=1e-3)
    for config in (CONFIGS[0], TrainConfig(epochs=4)):  # alone on cuda: a stack of one
        alone_cpu = fit(data.part("train"), config, valid=data.part("valid"), seed=SEEDS[0], **data.dims)
        alone_gpu = fit(data.part("train"), config, valid=data.part("valid"), seed=SEEDS[0], device=cuda, **data.dims)
        assert alone_gpu.best_valid_rmse == pytest.approx(alone_cpu.best_valid_rmse, rel=1e-3)
