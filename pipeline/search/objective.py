"""One trial: its config, its MLflow child run, its training, reported per epoch and prunable."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import optuna
import torch

from pipeline.search.interrupt import raise_if_interrupted
from pipeline.search.study import Cap, this_process
from pipeline.space import SearchSpace, suggest
from pipeline.split import Interactions
from pipeline.tracking import Tracker, TrackingError, TrialRun
from pipeline.training import FitResult, TrainConfig, TrainingDiverged, fit

__all__ = ["EXPECTED_FAILURES", "Objective", "OverCap", "TrialLifecycle", "reporter", "trial_seed", "tracked"]


class OverCap(RuntimeError):
    """Another worker took the study's last slot between our check and our trial's start."""


# A trial that fails for one of these is recorded FAIL with its reason and the study goes on;
# anything else (a bug, Ctrl-C) stops the worker, after the trial's run is closed.
EXPECTED_FAILURES = (TrainingDiverged, TrackingError, OverCap)
NOTE = "mlflow.note.content"  # the run's description in `mlflow ui`


def trial_seed(study_seed: int, trial_number: int) -> int:
    return (study_seed * 1_000_003 + trial_number) % 2**31


class _NoRun:
    """Stands in for a TrialRun when tracking is off (benchmarks, unit tests)."""

    run_id = None

    def epoch(self, epoch: int, **values: float) -> None:
        pass

    def log(self, **values: float) -> None:
        pass

    def end(self, status: str, tags=None) -> None:
        pass


class TrialLifecycle:
    """A trial's MLflow run from start to end; its status set once, by how the trial ended:
    COMPLETE -> FINISHED, PRUNED -> FINISHED too (stopping early is the pruner working, not a
    fault; the tag optuna.state and the run's description say so), an expected failure -> FAILED
    (reason kept on the trial and the run), Ctrl-C -> KILLED, anything else -> FAILED. So red in
    `mlflow ui` means something went wrong. `run` is a no-op until `start`."""

    def __init__(self, trial: optuna.Trial, tracker: Tracker | None, study_name: str) -> None:
        self.trial, self.tracker, self.study_name = trial, tracker, study_name
        self.run: TrialRun | _NoRun = _NoRun()

    def start(self, config: TrainConfig) -> TrialRun | _NoRun:
        # As trained: l2_bias resolved, no 'None' cells (patience off is no patience column).
        params = {k: v for k, v in config.to_dict().items() if v is not None}
        params["l2_bias"] = config.l2 if config.l2_bias is None else config.l2_bias
        params["trial_number"] = self.trial.number
        if self.tracker is not None:
            self.run = self.tracker.start_trial(self.trial.number, params, self.study_name)
            self.trial.set_user_attr("mlflow_run_id", self.run.run_id)
        return self.run

    def end(self, exc: BaseException | None) -> None:
        if exc is None:
            self.run.end("FINISHED", tags={"optuna.state": "COMPLETE"})
        elif isinstance(exc, optuna.TrialPruned):
            self.run.end("FINISHED", tags={"optuna.state": "PRUNED", NOTE: f"Pruned: {exc}"})
        else:
            reason = str(exc) if isinstance(exc, EXPECTED_FAILURES) else repr(exc)[:500]
            self.trial.set_user_attr("fail_reason", reason)
            interrupted = isinstance(exc, KeyboardInterrupt)
            note = "Interrupted (Ctrl-C or SIGTERM); rerun the search to resume" if interrupted else f"Failed: {reason}"
            try:  # a tracking error while closing must not hide the trial's own error
                self.run.end("KILLED" if interrupted else "FAILED",
                             tags={"optuna.state": "FAIL", "fail_reason": reason, NOTE: note})
            except TrackingError as closing:
                print(f"warning: could not close MLflow run {self.run.run_id}: {closing}", file=sys.stderr)


@contextmanager
def tracked(trial: optuna.Trial, tracker: Tracker | None, study_name: str) -> Iterator[TrialLifecycle]:
    """`with tracked(trial, ...) as life: run = life.start(config); ...`: the run ends with the
    status that matches how the block ended, exactly once, and the exception goes on."""
    life = TrialLifecycle(trial, tracker, study_name)
    try:
        yield life
    except BaseException as exc:
        life.end(exc)
        raise
    try:
        life.end(None)
    except TrackingError as exc:  # the trial trained but its result is not recorded: a failure
        life.end(exc)
        raise


class Objective:
    """Built once with the data on the device; called by Optuna once per trial.

    train, valid: encoded rows (moved to `device` here, once). dims: `Split.dims`.
    cap: the study-wide cap (None: Optuna's n_trials is the only limit)."""

    def __init__(self, space: SearchSpace, train: Interactions, valid: Interactions, dims: dict, *,
                 device: torch.device, seed: int, tracker: Tracker | None, study_name: str,
                 cap: Cap | None = None) -> None:
        self.space, self.train, self.valid, self.dims = space, train.to(device), valid.to(device), dims
        self.device, self.seed, self.tracker, self.study_name, self.cap = device, seed, tracker, study_name, cap

    def config(self, trial: optuna.Trial) -> TrainConfig:
        if trial.user_attrs.get("reference") == "d2l":
            return TrainConfig()
        return suggest(trial, self.space)

    def __call__(self, trial: optuna.Trial) -> float:
        with tracked(trial, self.tracker, self.study_name) as life:
            config, run = self.begin(trial, life)
            result = self.fit(trial, config, run)
            return self.record(trial, run, result)

    def fit(self, trial: optuna.Trial, config: TrainConfig, run: TrialRun | _NoRun) -> FitResult:
        """The trial's model alone, reported and prunable epoch by epoch."""
        return fit(self.train, config, valid=self.valid, seed=trial_seed(self.seed, trial.number), device=self.device,
                   callback=reporter(trial, run), **self.dims)

    def begin(self, trial: optuna.Trial, life: TrialLifecycle) -> tuple[TrainConfig, TrialRun | _NoRun]:
        """Claim the trial for this process, check the cap, draw its config, start its run."""
        trial.set_user_attr("worker", this_process())  # a rerun on this machine can tell it died
        if self.cap and not self.cap.admits(trial.number, trial.study.get_trials(deepcopy=False)):
            raise OverCap("over the study's cap: another worker took the last slot")
        config = self.config(trial)
        trial.set_user_attr("config", config.to_dict())
        return config, life.start(config)

    def record(self, trial: optuna.Trial, run: TrialRun | _NoRun, result: FitResult) -> float:
        """Log a trained trial's outcome; returns its objective value, the best valid RMSE."""
        trial.set_user_attr("best_epoch", result.best_epoch)
        run.log(best_valid_rmse=result.best_valid_rmse, best_epoch=result.best_epoch,
                epochs_run=len(result.history), train_seconds=result.train_seconds,
                examples_per_second=result.examples_per_second)
        return result.best_valid_rmse


def reporter(trial: optuna.Trial, run: TrialRun | _NoRun):
    """The epoch callback: log the curve, report to Optuna, prune (a pruned trial's run still gets
    its best valid RMSE so far, so it sorts among the others in `mlflow ui`)."""
    best = (math.inf, 0)

    def on_epoch(epoch: int, train_mse: float, valid_rmse: float) -> None:
        nonlocal best
        raise_if_interrupted()
        run.epoch(epoch, train_mse=train_mse, valid_rmse=valid_rmse)
        best = min(best, (valid_rmse, epoch))
        trial.report(valid_rmse, epoch)
        if trial.should_prune():
            run.log(best_valid_rmse=best[0], best_epoch=best[1], epochs_run=epoch)
            raise optuna.TrialPruned(f"pruned at epoch {epoch}: valid RMSE {valid_rmse:.4f}")

    return on_epoch
