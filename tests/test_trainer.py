import math

import pytest
import torch

from pipeline.evaluate import baselines, evaluate
from pipeline.device import resolve_device
from pipeline.training import OPTIMIZERS, TrainConfig, TrainingDiverged, fit, refit

# Settings that learn the small synthetic problem in a few epochs, per optimizer.
GOOD = {
    "sgd": dict(lr=2.0, weight_decay=0.0, l2=0.02),
    "adam": dict(lr=0.02, weight_decay=0.0, l2=0.02),
    "adamw": dict(lr=0.02, weight_decay=0.01),
    "rmsprop": dict(lr=0.005, weight_decay=0.0, l2=0.02),
    "adagrad": dict(lr=0.2, weight_decay=0.0, l2=0.02),
    "sparse_sgd": dict(lr=0.02, weight_decay=0.0, l2=0.02),
}


def _fit(split, config, **kw):
    return fit(split.part("train"), config, valid=split.part("valid"), device="cpu", **split.dims, **kw)


@pytest.mark.parametrize("implicit", ["none", "both"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_learns_the_low_rank_structure(small_split, optimizer, implicit):
    config = TrainConfig(factors=8, optimizer=optimizer, epochs=15, batch_size=256, init_std=0.1, implicit=implicit,
                         **GOOD[optimizer])
    result = _fit(small_split, config)
    reference = baselines(small_split.part("train"), small_split.part("valid"), small_split.n_users,
                          small_split.n_items, small_split.ratings.rating_scale)
    assert result.best_valid_rmse < reference["biases_only"].rmse - 0.1
    # the restored model is the best epoch's
    assert evaluate(result.model, small_split.part("valid")).rmse == pytest.approx(result.best_valid_rmse, rel=1e-5)


def test_recovers_the_truth_down_to_the_noise_floor(small_split):
    config = TrainConfig(factors=8, optimizer="sparse_sgd", lr=0.02, weight_decay=0.0, l2=0.02, epochs=40,
                         batch_size=128, init_std=0.1)
    assert _fit(small_split, config).best_valid_rmse < 0.25 * 1.35  # noise std 0.25


def test_same_seed_same_numbers_other_seed_other_numbers(small_split):
    config = TrainConfig(factors=8, epochs=3)
    a, b, c = _fit(small_split, config, seed=7), _fit(small_split, config, seed=7), _fit(small_split, config, seed=8)
    assert [h[1:] for h in a.history] == [h[1:] for h in b.history]
    assert torch.equal(a.model.users, b.model.users)
    assert a.history[-1][1] != c.history[-1][1]


def test_divergence_raises_at_its_epoch(small_split):
    config = TrainConfig(optimizer="sgd", lr=1e6, weight_decay=0.0, epochs=5)
    with pytest.raises(TrainingDiverged, match="diverged at epoch 1") as error:
        _fit(small_split, config)
    assert error.value.epoch == 1 and not math.isfinite(error.value.loss)


def test_the_callback_sees_every_epoch_and_can_stop(small_split):
    seen = []
    result = _fit(small_split, TrainConfig(factors=4, epochs=10),
                  callback=lambda e, loss, rmse: seen.append((e, loss, rmse)) or e == 3)
    assert [s[0] for s in seen] == [1, 2, 3] and len(result.history) == 3 and result.stopped_early
    assert all(math.isfinite(v) for s in seen for v in s[1:])


def test_early_stopping_restores_the_best_epoch(small_split):
    # Adam with no regularization overfits: valid RMSE turns up after a few epochs.
    config = TrainConfig(factors=32, lr=0.05, weight_decay=0.0, epochs=40, patience=3, init_std=0.1)
    result = _fit(small_split, config)
    rmses = [h[2] for h in result.history]
    assert result.stopped_early and len(rmses) == result.best_epoch + 3
    assert result.best_valid_rmse == min(rmses)
    assert evaluate(result.model, small_split.part("valid")).rmse == pytest.approx(min(rmses), rel=1e-5)


def test_without_valid_data_patience_is_ignored_and_refit_runs_its_epochs(small_split):
    config = TrainConfig(factors=4, optimizer="sparse_sgd", lr=0.02, weight_decay=0.0, epochs=7, patience=2)
    plain = fit(small_split.part("train"), config, device="cpu", **small_split.dims)
    assert len(plain.history) == 7 and plain.best_epoch == 7 and math.isnan(plain.best_valid_rmse)
    final = refit(small_split.part("train+valid"), config, 5, device="cpu", **small_split.dims)
    assert len(final.history) == 5 and not final.stopped_early


def test_the_device_rule():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device 'gpu'"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.parametrize("config", [TrainConfig(factors=4, epochs=2),
                                    TrainConfig(family="bayes", implicit="both", factors=4, epochs=6, burn_in=2)],
                         ids=["mf", "bayes-implicit"])
def test_an_unknown_id_scores_as_the_average_known_one(small_split, config):
    """The fallback rows: an unknown user's unclamped score for an item is the mean of the known
    users' scores for it, an unknown item's for a user the mean of the known items', and both
    unknown the mean over every known pair (the zero row scored μ + b_i instead)."""
    model = _fit(small_split, config).model
    n_users, n_items = small_split.n_users, small_split.n_items
    users, items = torch.arange(n_users + 1), torch.arange(n_items + 1)
    with torch.no_grad():
        grid = model(users.repeat_interleave(n_items + 1), items.repeat(n_users + 1)).view(n_users + 1, -1).double()
    known = grid[:-1, :-1]
    torch.testing.assert_close(grid[-1, :-1], known.mean(0), atol=1e-4, rtol=0)
    torch.testing.assert_close(grid[:-1, -1], known.mean(1), atol=1e-4, rtol=0)
    torch.testing.assert_close(grid[-1, -1], known.mean(), atol=1e-4, rtol=0)


def test_predictions_are_clamped_to_the_rating_scale(small_split):
    model = _fit(small_split, TrainConfig(factors=4, epochs=1)).model
    with torch.no_grad():
        model.users[0, 4] = 100.0  # a huge user bias
    assert model.predict(torch.tensor([0]), torch.tensor([0])).item() == 5.0


def test_the_global_thread_setting_is_restored(small_split):
    before = torch.get_num_threads()
    _fit(small_split, TrainConfig(factors=4, epochs=1), threads=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("change,message", [
    ({"optimizer": "lbfgs"}, "optimizer='lbfgs'"),
    ({"lr": 0.0}, "lr=0.0"),
    ({"factors": 0}, "factors=0"),
    ({"optimizer": "sparse_sgd", "weight_decay": 0.1}, "weight_decay=0.1"),
    ({"patience": 0}, "patience=0"),
])
def test_bad_configs_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig().replace(**change)


def test_trains_on_cuda(small_split, cuda):
    result = fit(small_split.part("train"), TrainConfig(factors=8, epochs=2), valid=small_split.part("valid"),
                 device=cuda, n_users=small_split.n_users, n_items=small_split.n_items, rating_scale=(1.0, 5.0))
    assert result.model.users.device.type == "cuda" and math.isfinite(result.best_valid_rmse)


@pytest.mark.parametrize("batch_size", [1, 64, 1000])
def test_the_compiled_sparse_sgd_loop_matches_the_tensor_path(small_split, batch_size):
    config = TrainConfig(factors=6, optimizer="sparse_sgd", lr=0.01, weight_decay=0.0, l2=0.05, l2_bias=0.01,
                         epochs=3, batch_size=batch_size, init_std=0.1)
    compiled = _fit(small_split, config, compiled=True)
    tensors = _fit(small_split, config, compiled=False)
    for a, b in zip(compiled.history, tensors.history):
        assert a[1] == pytest.approx(b[1], rel=1e-4) and a[2] == pytest.approx(b[2], rel=1e-4)
    torch.testing.assert_close(compiled.model.users, tensors.model.users, atol=1e-4, rtol=1e-3)
    assert (compiled.model.users[:, 7] == 1).all() and (compiled.model.items[:, 6] == 1).all()
