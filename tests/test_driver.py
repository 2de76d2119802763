"""The epoch driver on a scripted engine: what ends a model, what it keeps, and that one model's
end leaves the others training."""

import math

import optuna
import pytest

from pipeline.training import TrainConfig, TrainingDiverged
from pipeline.training.driver import drive


class Scripted:
    """An engine whose models follow scripts of (train MSE, valid RMSE) per epoch; a model's
    "tables" are the epoch it is at, and burn_in epochs may not be kept as best."""

    def __init__(self, scripts, burn_in=0):
        self.scripts, self.burn_in = scripts, burn_in
        self.live, self.at, self.dropped = list(range(len(scripts))), 0, []

    def epoch(self, epoch):
        self.at = epoch
        return [self.scripts[k][epoch - 1][0] for k in self.live]

    def valid_rmse(self):
        return [self.scripts[k][self.at - 1][1] for k in self.live]

    def can_be_best(self, k, epoch):
        return epoch > self.burn_in

    def snapshot(self, k):
        return self.at

    def model(self, k, snapshot):
        return ("model", k, self.at if snapshot is None else snapshot)

    def drop(self, leaving):
        self.dropped.append(sorted(leaving))
        self.live = [k for k in self.live if k not in leaving]


def curve(*rmses):
    return [(1.0, r) for r in rmses]


def test_patience_stops_a_model_and_its_best_epoch_is_kept():
    engine = Scripted([curve(0.9, 0.8, 0.85, 0.86, 0.7)])
    (result,) = drive(engine, [TrainConfig(epochs=5, patience=2)], [None], True, rows=10)
    assert [h[0] for h in result.history] == [1, 2, 3, 4]
    assert (result.best_epoch, result.best_valid_rmse, result.stopped_early) == (2, 0.8, True)
    assert result.model == ("model", 0, 2)


def test_without_valid_data_every_epoch_runs_and_the_last_is_kept():
    engine = Scripted([curve(0.9, 0.8, 0.85)])
    (result,) = drive(engine, [TrainConfig(epochs=3, patience=1)], [None], False, rows=10)
    assert len(result.history) == 3 and result.best_epoch == 3 and math.isnan(result.best_valid_rmse)
    assert result.model == ("model", 0, 3) and not result.stopped_early


def test_each_model_ends_on_its_own_and_the_others_go_on():
    def prune_at_2(epoch, loss, rmse):
        if epoch == 2:
            raise optuna.TrialPruned()

    def stop_at_3(epoch, loss, rmse):
        return epoch == 3

    scripts = [curve(0.9, 0.8, 0.7, 0.6), curve(0.9, 0.8, 0.7, 0.6), [(1.0, 0.9), (math.inf, 0.8)],
               curve(0.9, 0.8, 0.7, 0.6)]
    engine = Scripted(scripts)
    configs = [TrainConfig(epochs=4)] * 3 + [TrainConfig(epochs=2)]
    ended = []
    outcomes = drive(engine, configs, [prune_at_2, stop_at_3, None, None], True, rows=10,
                     on_end=lambda k, outcome: ended.append((k, outcome, list(engine.live))))
    assert [(k, outcome) for k, outcome, _ in ended] == [(k, outcomes[k]) for k in (0, 2, 3, 1)]
    assert [live for _, _, live in ended] == [[1]] * 3 + [[]]  # told when it ends, not when all have
    assert isinstance(outcomes[0], optuna.TrialPruned)
    assert outcomes[1].best_epoch == 3 and outcomes[1].stopped_early
    assert isinstance(outcomes[2], TrainingDiverged) and outcomes[2].epoch == 2
    assert outcomes[3].best_epoch == 2 and not outcomes[3].stopped_early
    assert engine.dropped == [[], [0, 2, 3], [1]]


def test_burn_in_epochs_are_never_best_nor_count_against_patience():
    engine = Scripted([curve(0.5, 0.6, 0.9, 0.95, 0.96)], burn_in=2)
    (result,) = drive(engine, [TrainConfig(epochs=5, patience=2)], [None], True, rows=10)
    assert result.best_epoch == 3 and len(result.history) == 5


def test_ctrl_c_stops_every_model():
    def interrupt(epoch, loss, rmse):
        raise KeyboardInterrupt

    ended = []
    with pytest.raises(KeyboardInterrupt):
        drive(Scripted([curve(0.9), curve(0.9)]), [TrainConfig(epochs=1)] * 2, [None, interrupt], True, rows=10,
              on_end=lambda k, outcome: ended.append(k))
    assert ended == [0]  # model 0 ended in that epoch before the interrupt: it is kept
