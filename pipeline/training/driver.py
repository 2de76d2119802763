"""The one epoch driver: K >= 1 models of one engine, each ending on its own.

An engine trains its live models together and exposes one small surface, `Engine` below. The
driver runs its epochs, times them, keeps each model's curve, asks the model's callback after
every epoch, stops a model at its last epoch, on its callback's word or its patience, fails it
when its loss is not finite, remembers its best epoch (engine snapshots) and builds its final
model from that snapshot. One model's end never stops the others; Ctrl-C (a BaseException that
is not an Exception) stops them all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.model import MatrixFactorization
from pipeline.training.config import TrainConfig

__all__ = ["EndCallback", "Engine", "EpochCallback", "FitResult", "TrainingDiverged", "drive"]

# (epoch, train_loss, valid_rmse) -> True to stop training. May raise (e.g. optuna.TrialPruned).
EpochCallback = Callable[[int, float, float], "bool | None"]
# (model index, its FitResult or the exception that ended it), as soon as that model ends.
EndCallback = Callable[[int, "FitResult | Exception"], None]


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float) -> None:
        super().__init__(f"training diverged at epoch {epoch}: train loss is {loss} "
                         "(lower the learning rate or raise regularization)")
        self.epoch, self.loss = epoch, loss


@dataclass
class FitResult:
    """The trained model (best epoch restored) and how it got there.

    history: one (epoch, train_mse, valid_rmse) per epoch run; valid_rmse is NaN without valid data.
    train_seconds: wall time of the epochs the model was part of (validation excluded).
    examples_per_second: training rows processed per second of those epochs.
    """

    model: MatrixFactorization | None = None
    history: list[tuple[int, float, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_rmse: float = float("nan")
    train_seconds: float = 0.0
    examples_per_second: float = 0.0
    stopped_early: bool = False


class Engine(Protocol):
    """What the driver needs of an engine. Models are numbered 0..K-1 as their configs."""

    live: list[int]
    """The models still training, in the engine's order."""

    def epoch(self, epoch: int) -> list[float]:
        """One epoch (or Gibbs sweep) of every live model; each one's train MSE."""

    def valid_rmse(self) -> list[float]:
        """Each live model's clamped RMSE on the valid rows."""

    def can_be_best(self, k: int, epoch: int) -> bool:
        """Whether model k's state after `epoch` may be kept as its best (a chain's burn-in may not)."""

    def snapshot(self, k: int) -> Any:
        """What restores model k's current state later (its tables, or a count of kept samples)."""

    def model(self, k: int, snapshot: Any | None) -> MatrixFactorization:
        """Model k as a scorer: from `snapshot`, or from its current state when None."""

    def drop(self, leaving: list[int]) -> None:
        """Stop training these models (after their `model` was built)."""


class _Best:
    """Early stopping's memory for one model: the best valid RMSE so far and its snapshot."""

    def __init__(self) -> None:
        self.rmse, self.epoch, self.snapshot, self.since = math.inf, 0, None, 0

    def update(self, epoch: int, valid_rmse: float, take: Callable[[], Any]) -> int:
        """Record the epoch; returns how many counted epochs have passed without a better RMSE."""
        if valid_rmse < self.rmse:  # False for NaN: without valid data nothing is "best"
            self.rmse, self.epoch, self.snapshot, self.since = valid_rmse, epoch, take(), 0
        else:
            self.since += 1
        return self.since


def drive(engine: Engine, configs: Sequence[TrainConfig], callbacks: Sequence[EpochCallback | None],
          has_valid: bool, rows: int, on_end: EndCallback | None = None,
          finalize: Callable[[MatrixFactorization], None] | None = None) -> list[FitResult | Exception]:
    """Train every model of `engine` to its end; returns, in order, each one's FitResult (best
    epoch restored) or the exception that ended it (TrainingDiverged, or what its callback
    raised, e.g. optuna.TrialPruned). rows: training rows per epoch. on_end(k, outcome): called
    as soon as model k ends, so that what ended is kept if Ctrl-C stops the others later.
    finalize(model): applied to each final model before anyone sees it (its fallback rows)."""
    results = [FitResult() for _ in configs]
    bests = [_Best() for _ in configs]
    outcomes: list[FitResult | Exception | None] = [None] * len(configs)
    epoch = 0
    while engine.live:
        epoch += 1
        start = time.perf_counter()
        losses = engine.epoch(epoch)
        seconds = time.perf_counter() - start
        rmses = engine.valid_rmse() if has_valid else [math.nan] * len(engine.live)
        leaving = []
        try:
            for k, loss, rmse in zip(list(engine.live), losses, rmses):
                results[k].train_seconds += seconds
                try:
                    done = _end_epoch(engine, k, configs[k], epoch, loss, rmse, has_valid, callbacks[k], results[k],
                                      bests[k])
                except Exception as exc:  # noqa: BLE001 - this model's end (pruned, diverged), not the others'
                    outcomes[k], done = exc, True
                if done:
                    leaving.append(k)
        finally:  # Ctrl-C in a later model's callback: the models that ended before it still end
            for k in leaving:
                if outcomes[k] is None:
                    outcomes[k] = _close(engine, k, results[k], bests[k], rows, finalize)
            engine.drop(leaving)
            for k in leaving:
                if on_end is not None:
                    on_end(k, outcomes[k])
    return outcomes


def _end_epoch(engine: Engine, k: int, config: TrainConfig, epoch: int, train_mse: float, valid_rmse: float,
               has_valid: bool, callback: EpochCallback | None, result: FitResult, best: _Best) -> bool:
    """Record one epoch of model k; True when its training ends here: the last epoch, the
    callback says stop, or `patience` counted epochs without a better valid RMSE. Raises
    TrainingDiverged on a non-finite loss (and whatever the callback raises)."""
    if not math.isfinite(train_mse):
        raise TrainingDiverged(epoch, train_mse)
    result.history.append((epoch, train_mse, valid_rmse))
    since_best = best.update(epoch, valid_rmse, lambda: engine.snapshot(k)) if engine.can_be_best(k, epoch) else 0
    stop = bool(callback(epoch, train_mse, valid_rmse)) if callback is not None else False
    if stop or (has_valid and config.patience is not None and since_best >= config.patience):
        result.stopped_early = epoch < config.epochs
        return True
    return epoch >= config.epochs


def _close(engine: Engine, k: int, result: FitResult, best: _Best, rows: int,
           finalize: Callable[[MatrixFactorization], None] | None) -> FitResult:
    """The best epoch's model (without valid data: the last epoch's), finalized, and the throughput."""
    result.model = engine.model(k, best.snapshot)
    if finalize is not None:
        finalize(result.model)
    if best.snapshot is None:
        result.best_epoch, result.best_valid_rmse = len(result.history), math.nan
    else:
        result.best_epoch, result.best_valid_rmse = best.epoch, best.rmse
    seconds = result.train_seconds
    result.examples_per_second = rows * len(result.history) / seconds if seconds else 0.0
    return result
