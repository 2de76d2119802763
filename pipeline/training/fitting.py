"""fit(), fit_stack() and refit(): the driver over the engine that a config (or a stack) needs.

The engine: the Gibbs chain for bayes; the compiled loop for sparse_sgd without implicit blocks
on a CPU; the tensor engine otherwise (every rule, implicit blocks, stacked, graphed on cuda).
The data moves to the device once; nothing in a batch loop reads a value back to the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from pipeline.device import cpu_threads, resolve_device
from pipeline.split import Interactions
from pipeline.training.config import TrainConfig
from pipeline.training.driver import EndCallback, EpochCallback, FitResult, drive

__all__ = ["fit", "fit_stack", "refit", "refit_epochs", "stack_key"]


def stack_key(config: TrainConfig) -> tuple[str, int, str, str] | None:
    """(optimizer, batch size, implicit mode, feature mode) for configs that can share a stack (only
    configs with the same key can); None for those trained alone (bayes)."""
    return (config.optimizer, config.batch_size, config.implicit, config.features) if config.family == "mf" else None


def fit(train: Interactions, config: TrainConfig, *, seed: int = 0, callback: EpochCallback | None = None,
        **options) -> FitResult:
    """Train one model of `config` on `train` (rows already encoded against n_users / n_items);
    returns its FitResult (best epoch restored). Raises TrainingDiverged at the first epoch whose
    train loss is not finite, and whatever the callback raises (e.g. optuna.TrialPruned).
    options: `fit_stack`'s keywords (n_users, n_items, rating_scale, valid, device, threads, compiled)."""
    (outcome,) = _fit_all(train, [config], [seed], callbacks=[callback], **options)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def fit_stack(train: Interactions, configs: Sequence[TrainConfig], seeds: Sequence[int], **options
              ) -> list[FitResult | Exception]:
    """Train configs[k] with seeds[k] for every k, together (configs of one `stack_key`, or any one
    config alone); model k equals `fit(train, configs[k], seed=seeds[k])` up to float rounding. Returns, in order, each model's FitResult or the exception
    that ended it: one model's end never stops the others. A BaseException that is not an
    Exception (Ctrl-C) stops the whole stack and propagates. options: see `_fit_all`."""
    keys = {stack_key(c) for c in configs}
    if len(configs) > 1 and (None in keys or len(keys) != 1):
        raise ValueError(f"fit_stack: configs must share one stack_key (mf, one optimizer, one batch size, one "
                         f"implicit mode); got keys {sorted(keys, key=str)}")
    return _fit_all(train, list(configs), list(seeds), **options)


def _fit_all(train: Interactions, configs: list[TrainConfig], seeds: list[int], *, n_users: int, n_items: int,
             rating_scale: tuple[float, float], valid: Interactions | None = None,
             device: torch.device | str | None = None, callbacks: Sequence[EpochCallback | None] | None = None,
             threads: int | None = 1, compiled: bool = True, on_end: EndCallback | None = None,
             features: dict | None = None) -> list[FitResult | Exception]:
    """valid: scored after every epoch (clamped RMSE) for the callbacks and early stopping; without
    it every epoch runs. on_end: see `drive`. features: {"user": [...], "item": [...]}, each
    side's feature blocks over the table rows (`Split.features`), for configs with `features`. device: see `resolve_device`. threads: CPU intra-op threads during an mf
    fit (bayes keeps torch's: its large batched products pay). compiled: sparse_sgd on a CPU with
    the numba loop (same mathematics, ~3× faster)."""
    device = resolve_device(device)
    train = train.to(device)
    valid = valid.to(device) if valid is not None and len(valid) else None
    dims = {"n_users": n_users, "n_items": n_items, "rating_scale": rating_scale}
    folds = _feature_folds(configs[0].features, features or {}, device)
    engine = _engine(train, configs, seeds, dims, valid, device, compiled, folds)
    bayes = configs[0].family == "bayes"
    weights = {side: [torch.from_numpy(np.bincount(b.col, b.values, b.shape[1])) for b in blocks]
               for side, blocks in (features or {}).items()}  # each value's fold weight summed over the entities
    with cpu_threads(device, None if bayes else threads):
        return drive(engine, configs, callbacks or [None] * len(configs), valid is not None, len(train), on_end,
                     finalize=lambda model: model.average_fallbacks(weights))


def _feature_folds(mode: str, features: dict, device) -> dict[str, list]:
    """Each side's feature blocks as folds (pipeline.training.blocks.Fold) where `mode` asks for
    them; a side asked for that the data has no features for is an error."""
    from pipeline.training.blocks import Fold
    from pipeline.model import ITEM_ONE, USER_ONE

    folds = {}
    for side, const in (("user", USER_ONE), ("item", ITEM_ONE)):
        if mode in (side, "both"):
            if not features.get(side):
                raise ValueError(f"train config features={mode!r}: the data has no {side} features")
            folds[side] = [Fold.of(block, const, device) for block in features[side]]
    return folds


def _engine(train, configs, seeds, dims, valid, device, compiled: bool, folds: dict):
    config = configs[0]
    if config.family == "bayes":
        from pipeline.training.gibbs import GibbsEngine

        generator = torch.Generator(device=device).manual_seed(seeds[0])
        return GibbsEngine(train, config, **dims, valid=valid, generator=generator, folds=folds)
    if config.optimizer == "sparse_sgd" and config.implicit == "none" and not folds and compiled and device.type == "cpu":
        from pipeline.training.compiled import CompiledEngine  # numba: imported only when it runs

        return CompiledEngine(train, configs, seeds, dims, valid)
    from pipeline.training.tensor import TensorEngine

    return TensorEngine(train, configs, seeds, dims, valid, device, folds)


def refit(rows: Interactions, config: TrainConfig, epochs: int, *, chains: int = 1, **fit_options) -> FitResult:
    """The final model: `config` trained on all of `rows` (train+valid) for `epochs` (the best epoch
    count that valid data chose; for bayes at least one kept sample), with no early stopping:
    there is nothing left to validate on. `fit_options`: fit's keywords (n_users, ..., seed, device).
    chains (bayes; mf ignores it): independent chains, seeded seed + 1000 c, whose posterior means
    are averaged into one model (`gibbs.average`; ordinal ones pooled over `rows`); the result's
    history is the first chain's."""
    config = config.replace(epochs=refit_epochs(config, epochs), patience=None)
    if config.family != "bayes" or chains == 1:
        return fit(rows, config, **fit_options)
    from pipeline.training.gibbs import average

    seed = fit_options.pop("seed", 0)
    results = [fit(rows, config, seed=seed + 1000 * c, **fit_options) for c in range(chains)]
    return replace(results[0], model=average([r.model for r in results], (rows.users, rows.items)),
                   train_seconds=sum(r.train_seconds for r in results))


def refit_epochs(config: TrainConfig, epochs: int) -> int:
    """The epochs (sweeps) `refit` runs per model for `epochs` asked: at least one, and for bayes at
    least one kept sample."""
    return max(epochs, config.burn_in + 1 if config.family == "bayes" else 1)
